"""The paper-scale CLIP config instantiates abstractly at the expected size."""

from configs import clip_paper


def test_paper_clip_config_instantiates_abstractly(capsys):
    count = clip_paper.print_param_count()
    # ViT-H/16 (256 px, width 1280, 32 blocks) + text (width 1024, 24 blocks): ~986M.
    assert 0.95e9 < count < 1.02e9
    assert "M parameters" in capsys.readouterr().out
