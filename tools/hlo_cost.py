"""Static cost of an optimized HLO module: bytes and FLOPs of every executed op, and a roofline.

Reads the text of an XLA module after optimisation (`jax.jit(f).lower(...).compile().as_text()`
or a `*.after_optimizations.txt` dump) and lists the ops its entry computation runs, with
while-loop bodies counted `known_trip_count` times and called computations inlined. For each
op:
  - bytes: every operand read once plus every result written once (the op's HBM traffic when
    nothing stays in cache; cuBLAS / cuDNN workspace and scratch results are left out), where
    an operand reached only through slices counts the slices, and a dynamic-update-slice
    (a scan stacking its outputs) counts its update, the buffer being updated in place;
  - flops: 2 * multiply-adds of the dots and convolutions it contains (cuBLAS GEMM and cuDNN
    convolution custom calls included; convolution taps on padding count, as implicit-GEMM
    kernels compute them; elementwise work is not counted);
  - category: matmul, convolution, attention (cuDNN fused attention), collective or other;
  - source: the JAX op path from the op's metadata, with layer and block indices collapsed.

`roofline` turns them into a time bound per op, max(bytes / bandwidth, flops / peak) plus a
fixed launch cost, which shows how much of a step is bound by memory traffic rather than by
the matrix units, and where that traffic comes from.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any

DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
FREE_OPCODES = {
    "parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
    "partition-id", "replica-id", "opt-barrier", "add-dependency",
}  # fmt: skip
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPES = "|".join(sorted(DTYPE_BYTES, key=len, reverse=True))
_SHAPE = re.compile(r"\b(" + _DTYPES + r")\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")


@dataclasses.dataclass(frozen=True)
class Instr:
    """One HLO instruction: its name, result type text, opcode, operand names and the rest."""

    name: str
    type: str
    opcode: str
    operands: tuple[str, ...]
    attrs: str
    root: bool
    index: int | None = None  # a parameter's number


@dataclasses.dataclass(frozen=True)
class Op:
    """One op of the module and its static cost, summed over its `count` executions."""

    name: str
    opcode: str
    category: str
    bytes: float
    flops: float
    source: str
    count: int = 1


def shapes(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in a result type (tuples flattened, layouts ignored)."""
    return [
        (dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in _SHAPE.findall(type_text)
    ]


def nbytes(type_text: str) -> float:
    return sum(DTYPE_BYTES[dt] * math.prod(dims) for dt, dims in shapes(type_text))


def _split_operands(rest: str) -> tuple[tuple[str, ...], str]:
    """Operand names up to the closing parenthesis of the call, and the attributes after it."""
    depth, i = 1, 0
    while i < len(rest) and depth:
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        i += 1
    args, attrs = rest[: i - 1], rest[i:]
    return tuple(re.findall(r"%([\w.\-]+)", args)), attrs


def parse_module(text: str) -> tuple[dict[str, dict[str, Instr]], str]:
    """{computation: {instruction name: Instr}} (in order) and the entry computation's name."""
    computations: dict[str, dict[str, Instr]] = {}
    entry, current = None, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(2), {})
            if header.group(1):
                entry = header.group(2)
            continue
        if current is None:
            continue
        m = _INSTR.match(line)
        if m:
            root, name, type_text, opcode, rest = m.groups()
            operands, attrs = _split_operands(rest)
            index = int(rest.split(")", 1)[0]) if opcode == "parameter" else None
            current[name] = Instr(name, type_text, opcode, operands, attrs, bool(root), index)
    if entry is None:
        raise ValueError("No ENTRY computation in the HLO text: pass an optimized HLO module.")
    return computations, entry


def _dims(instrs: dict[str, Instr], name: str) -> tuple[int, ...]:
    found = shapes(instrs[name].type) if name in instrs else []
    return found[0][1] if found else ()


def _first_result(instr: Instr) -> tuple[str, tuple[int, ...]]:
    return shapes(instr.type)[0]


def dot_flops(instr: Instr, instrs: dict[str, Instr]) -> float:
    """2 * output elements * contracted size, for `dot` and cuBLAS GEMM custom calls."""
    out = math.prod(_first_result(instr)[1])
    lhs = _dims(instrs, instr.operands[0])
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs) or re.search(
        r'"lhs_contracting_dimensions":\[([^\]]*)\]', instr.attrs
    )
    contracted = [int(d) for d in re.findall(r"\d+", m.group(1))] if m else []
    if any(d >= len(lhs) for d in contracted):
        return 0.0  # the operand's shape is not known here
    return 2.0 * out * math.prod(lhs[d] for d in contracted)


def conv_flops(instr: Instr, instrs: dict[str, Instr]) -> float:
    """2 * forward-output elements * window * input features / groups. cuDNN custom calls keep
    the forward convolution's window and dim_labels whatever their direction, so the forward
    output is the result (forward), the first operand (backward input: dy) or the second
    (backward filter: x, dy); the input features come from x, or from dx (backward input)."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instr.attrs)
    window = re.search(r"window=\{size=([\dx]+)", instr.attrs)
    groups = re.search(r"feature_group_count=(\d+)", instr.attrs)
    if not labels:
        return 0.0
    target = _target(instr)
    if "convBackwardInput" in target:
        y, x = _dims(instrs, instr.operands[0]), _first_result(instr)[1]
    elif "convBackwardFilter" in target:
        y, x = _dims(instrs, instr.operands[1]), _dims(instrs, instr.operands[0])
    else:
        y, x = _first_result(instr)[1], _dims(instrs, instr.operands[0])
    if not x or not y:
        return 0.0
    size = math.prod(int(s) for s in window.group(1).split("x")) if window else 1
    features = x[labels.group(1).index("f")]
    return 2.0 * math.prod(y) * size * features / (int(groups.group(1)) if groups else 1)


def attention_flops(instr: Instr, instrs: dict[str, Instr]) -> float:
    """cuDNN fused attention on q [B, T, N, H], k [B, S, N, H] (JAX's layout): QK^T and PV,
    2 * 2 * B N T S H forward; the backward recomputes QK^T and adds dV, dP, dQ, dK (2.5x)."""
    q, k = _dims(instrs, instr.operands[0]), _dims(instrs, instr.operands[1])
    if len(q) != 4 or len(k) != 4:
        return 0.0
    forward = 4.0 * q[0] * q[1] * k[1] * q[2] * q[3]
    return 2.5 * forward if "Backward" in _target(instr) else forward


def _target(instr: Instr) -> str:
    m = re.search(r'custom_call_target="([^"]*)"', instr.attrs)
    return m.group(1) if m else ""


def _called(instr: Instr) -> list[str]:
    return re.findall(r"(?:calls|body|to_apply)=%?([\w.\-]+)", instr.attrs)


def _source(instr: Instr) -> str:
    m = re.search(r'op_name="([^"]*)"', instr.attrs)
    return m.group(1) if m else ""


_SLICES = ("slice", "dynamic-slice")


def _operand_bytes(instr: Instr, instrs: dict[str, Instr]) -> float:
    return sum(nbytes(instrs[o].type) for o in instr.operands if o in instrs)


def _sliced_read(name: str, users: dict[str, list[Instr]]) -> float | None:
    """Bytes a fused computation reads of value `name` when it reaches it only through
    (dynamic) slices or as the buffer a dynamic-update-slice updates in place; else None."""
    if not users.get(name):
        return None
    total = 0.0
    for user in users[name]:
        if user.opcode == "bitcast":
            inner = _sliced_read(user.name, users)
            if inner is None:
                return None
            total += inner
        elif user.opcode in _SLICES and user.operands[0] == name:
            total += nbytes(user.type)
        elif user.opcode == "dynamic-update-slice" and user.operands[0] == name:
            continue
        else:
            return None
    return total


def _written(out: Instr, body: dict[str, Instr]) -> float:
    """Bytes a fusion writes for one output: the update of an in-place dynamic-update-slice."""
    while out.opcode == "bitcast" and out.operands and out.operands[0] in body:
        out = body[out.operands[0]]
    if out.opcode == "dynamic-update-slice" and out.operands[1] in body:
        return nbytes(body[out.operands[1]].type)
    return nbytes(out.type)


class _Module:
    def __init__(self, text: str):
        self.computations, self.entry = parse_module(text)

    def computation_flops(self, name: str) -> tuple[float, set[str]]:
        """FLOPs of the dots / convolutions inside a (fused) computation, and their kinds."""
        instrs = self.computations.get(name, {})
        flops, kinds = 0.0, set()
        for instr in instrs.values():
            f, kind = self.instr_flops(instr, instrs)
            flops += f
            kinds |= kind
        return flops, kinds

    def instr_flops(self, instr: Instr, instrs: dict[str, Instr]) -> tuple[float, set[str]]:
        target = _target(instr)
        if instr.opcode == "dot" or (instr.opcode == "custom-call" and "cublas" in target):
            return dot_flops(instr, instrs), {"matmul"}
        if instr.opcode == "convolution" or "$conv" in target:
            return conv_flops(instr, instrs), {"convolution"}
        if instr.opcode == "custom-call" and "fmha" in target:
            return attention_flops(instr, instrs), {"attention"}
        if instr.opcode == "fusion":
            total, kinds = 0.0, set()
            for called in _called(instr):
                f, k = self.computation_flops(called)
                total, kinds = total + f, kinds | k
            return total, kinds
        return 0.0, set()

    def source(self, instr: Instr) -> str:
        own = _source(instr)
        if own or instr.opcode != "fusion":
            return own
        for called in _called(instr):  # fusions often carry op_name on their root only
            body = self.computations.get(called, {})
            for inner in sorted(body.values(), key=lambda i: not i.root):
                if _source(inner):
                    return _source(inner)
        return ""

    def traffic(self, instr: Instr, instrs: dict[str, Instr]) -> tuple[float, float]:
        """(bytes read, bytes written) of one executed op. Slices read only the slice; a
        dynamic-update-slice updates its buffer in place (as XLA does inside loops), so it
        reads and writes the update alone. Fusions count each operand by how they use it."""
        if instr.opcode == "custom-call" and instr.type.startswith("("):
            return _operand_bytes(instr, instrs), nbytes(instr.type.split(", ")[0])  # no scratch
        if instr.opcode in _SLICES:
            return nbytes(instr.type), nbytes(instr.type)
        if instr.opcode == "dynamic-update-slice":
            update = nbytes(instrs[instr.operands[1]].type) if instr.operands[1] in instrs else 0
            return update, update
        if instr.opcode != "fusion" or not _called(instr):
            return _operand_bytes(instr, instrs), nbytes(instr.type)
        body = self.computations.get(_called(instr)[0], {})
        users: dict[str, list[Instr]] = collections.defaultdict(list)
        for inner in body.values():
            for operand in inner.operands:
                users[operand].append(inner)
        params = {i.index: i.name for i in body.values() if i.opcode == "parameter"}
        read = 0.0
        for k, operand in enumerate(instr.operands):
            full = nbytes(instrs[operand].type) if operand in instrs else 0.0
            sliced = _sliced_read(params.get(k, ""), users)
            read += full if sliced is None else min(full, sliced)
        root = next((i for i in body.values() if i.root), None)
        if root is None:
            return read, nbytes(instr.type)
        outs = [body[o] for o in root.operands if o in body] if root.opcode == "tuple" else [root]
        return read, sum(_written(out, body) for out in outs)

    def ops(self, name: str, count: int = 1) -> list[Op]:
        instrs = self.computations[name]
        out: list[Op] = []
        for instr in instrs.values():
            if instr.opcode in FREE_OPCODES:
                continue
            if instr.opcode == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr.attrs)
                body = re.search(r"body=%?([\w.\-]+)", instr.attrs)
                out += self.ops(body.group(1), count * (int(trips.group(1)) if trips else 1))
                continue
            if instr.opcode in ("call", "async-start") and _called(instr):
                for called in _called(instr):
                    out += self.ops(called, count)
                continue
            read, written = self.traffic(instr, instrs)
            flops, kinds = self.instr_flops(instr, instrs)
            if instr.opcode.startswith(COLLECTIVES):
                category = "collective"
            elif "attention" in kinds:
                category = "attention"
            elif "convolution" in kinds:
                category = "convolution"
            elif "matmul" in kinds:
                category = "matmul"
            else:
                category = "other"
            cost = (count * (read + written), count * flops)
            out.append(Op(instr.name, instr.opcode, category, *cost, self.source(instr), count))
        return out


def module_ops(text: str) -> list[Op]:
    """The executed ops of an optimized HLO module's entry computation, with their costs."""
    module = _Module(text)
    return module.ops(module.entry)


def source_group(source: str) -> str:
    """The module path of an op's JAX source, without jit/jvp/transpose wrappers, the final
    primitive and layer / block indices: ".../transformer/layers_3/mlp/fc1/dot_general" ->
    "transformer/layers_*/mlp/fc1"; ops without a model path are "(step)"."""
    parts = [p for p in source.split("/") if p and not p.startswith(("jit(", "pjit("))]
    parts = [p for p in parts if not re.match(r"^(transpose\()?jvp\(", p)]
    parts = [p for p in parts[:-1] if "->" not in p and "," not in p]
    if not parts:
        return "(step)"
    return re.sub(r"_\d+", "_*", "/".join(parts))


def roofline(ops: list[Op], peak_flops: float, bandwidth: float, launch_s: float) -> list[float]:
    """Seconds per op (all its executions): max(bytes / bandwidth, flops / peak) + launch."""
    return [max(op.bytes / bandwidth, op.flops / peak_flops) + op.count * launch_s for op in ops]


def summarize(
    ops: list[Op], peak_flops: float, bandwidth: float, launch_s: float, top: int = 20
) -> dict[str, Any]:
    """Roofline totals per category and per source module, and the `top` ops by time."""
    seconds = roofline(ops, peak_flops, bandwidth, launch_s)
    total = sum(seconds)
    by_category: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: {"ops": 0, "ms": 0.0, "gbytes": 0.0, "tflops": 0.0}
    )
    by_source: collections.Counter[str] = collections.Counter()
    for op, s in zip(ops, seconds, strict=True):
        row = by_category[op.category]
        row["ops"] += op.count
        row["ms"] += s * 1e3
        row["gbytes"] += op.bytes / 1e9
        row["tflops"] += op.flops / 1e12
        if op.category != "matmul" and op.category != "convolution":
            by_source[source_group(op.source)] += s * 1e3
    ranked = sorted(zip(ops, seconds, strict=True), key=lambda pair: -pair[1])[:top]
    return {
        "peak_flops": peak_flops,
        "bandwidth": bandwidth,
        "launch_s": launch_s,
        "ops": sum(op.count for op in ops),
        "estimate_ms": total * 1e3,
        "flops": sum(op.flops for op in ops),
        "bytes": sum(op.bytes for op in ops),
        "categories": dict(sorted(by_category.items(), key=lambda kv: -kv[1]["ms"])),
        "memory_bound_by_source_ms": dict(by_source.most_common(top)),
        "top": [
            {
                "op": op.name,
                "category": op.category,
                "ms": s * 1e3,
                "mbytes": op.bytes / 1e6,
                "gflops": op.flops / 1e9,
                "count": op.count,
                "source": op.source,
            }
            for op, s in ranked
        ],  # fmt: skip
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"roofline {summary['estimate_ms']:.2f} ms over {summary['ops']} ops: "
        f"{summary['flops'] / 1e12:.2f} TFLOP in dots and convolutions, "
        f"{summary['bytes'] / 1e9:.1f} GB moved",
        "category        ops       ms   share        GB   TFLOP",
    ]
    est = summary["estimate_ms"] or 1.0
    for name, row in summary["categories"].items():
        lines.append(
            f"{name:<12} {row['ops']:6d} {row['ms']:8.2f}  {row['ms'] / est:6.1%}  "
            f"{row['gbytes']:8.2f}  {row['tflops']:6.2f}"
        )
    lines.append("outside matmul / convolution, by source module (ms):")
    for source, ms in summary["memory_bound_by_source_ms"].items():
        lines.append(f"  {ms:8.2f}  {source}")
    lines.append("top ops (ms, MB, GFLOP, category, op, source):")
    for row in summary["top"]:
        lines.append(
            f"  {row['ms']:7.3f} {row['mbytes']:8.1f} {row['gflops']:7.1f}  {row['category']:<11} "
            f"{row['op']}  {row['source'][-80:]}"
        )
    return "\n".join(lines)
