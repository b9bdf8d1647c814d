"""dalle2-jax: DALL·E 2 (unCLIP) in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.90",
    "ml_collections>=1.0",
    "numpy>=2.0",
    "scipy>=1.11",
    "pillow>=10",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "transformers>=5.0",
    "tokenizers>=0.20",
    "safetensors>=0.4",
    "grain>=0.2.10",
    "array_record>=0.8",  # ArrayRecord sources (data.array_record); reads gs:// paths
    "tensorflow-datasets>=4.9.9",
]

EXTRAS = {
    # torch and diffusers are only independent references for parity tests (CPU build).
    "test": [
        "pytest>=8",
        "importlib_resources>=6",
        "pytest-timeout>=2.3",
        "pytest-xdist>=3.6",
        "portpicker>=1.6",
        "ruff>=0.6",
        "torch==2.13.0",
        "diffusers==0.42.1",
    ],
    "cuda": ["jax[cuda13]"],
    "tpu": ["jax[tpu]"],
}

setup(
    name="dalle2-jax",
    version="0.1.0",
    description="DALL·E 2 (unCLIP) in JAX/Flax: CLIP, diffusion prior, decoder, upsamplers.",
    packages=find_packages(include=["dalle2_jax", "dalle2_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
