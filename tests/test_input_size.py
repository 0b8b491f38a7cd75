"""Images (and training crops) smaller than MSGNN's graph can handle: a clear error, never a torch traceback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from derainkit.cli import main
from derainkit.errors import ConfigError, DerainkitError, InputSizeError
from derainkit.io import write_image
from derainkit.models.msgnn import MSGNN, MSGNNConfig
from derainkit.train.checkpoint import export_safetensors


def _model(**kw) -> MSGNN:
    torch.manual_seed(0)
    return MSGNN(MSGNNConfig(n_subnets=2, m_blocks=1, channels=8, **kw)).eval()


@pytest.mark.parametrize("kw", [dict(), dict(k=3), dict(k=7, patch_size=5), dict(stride=1),
                                dict(scales=(1,), exemplar=False), dict(window_rule="global"),
                                dict(variant="paper")])
def test_min_input_side_is_exact(kw):
    m = _model(**kw)
    side = m.min_input_side()
    with torch.no_grad():
        assert m(torch.rand(1, 3, side, side)).shape[-2:] == (side, side)
        with pytest.raises(InputSizeError, match=f"at least {side}×{side} px"):
            m(torch.rand(1, 3, side - 1, side - 1))


def test_message_names_the_branch_and_sizes():
    m = _model()
    with pytest.raises(InputSizeError) as exc:
        m(torch.rand(1, 3, 8, 8))
    msg = str(exc.value)
    assert "8×8" in msg and "scale2" in msg and "k=5" in msg
    with pytest.raises(InputSizeError, match="pyramid step needs at least 3×3"):
        m(torch.rand(1, 3, 2, 5))
    # a thin strip is too small even though its area is large
    with pytest.raises(InputSizeError):
        m(torch.rand(1, 3, 12, 400))


def test_cli_names_the_file(tmp_path, capsys):
    m = _model()
    weights = export_safetensors(m, tmp_path / "tiny.safetensors",
                                 {"model": "msgnn", "model_config": m.config.to_dict()})
    small = tmp_path / "small.png"
    write_image(small, np.full((10, 14, 3), 0.5, np.float32))
    assert main(["derain", str(small), str(tmp_path / "out.png"), "--model", "msgnn",
                 "--weights", str(weights), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "small.png" in err and "too small" in err and "Traceback" not in err
    # the same through `evaluate`: the shared evaluation loop names the pair's rainy file
    data = tmp_path / "data"
    write_image(data / "rain" / "tiny.png", np.full((10, 14, 3), 0.5, np.float32))
    write_image(data / "norain" / "tiny.png", np.full((10, 14, 3), 0.4, np.float32))
    assert main(["evaluate", "--model", "msgnn", "--weights", str(weights), "--data", str(data),
                 "--device", "cpu", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "tiny.png" in err and "too small" in err and "Traceback" not in err
    ok = tmp_path / "ok.png"
    write_image(ok, np.full((32, 40, 3), 0.5, np.float32))
    assert main(["derain", str(ok), str(tmp_path / "ok_out.png"), "--model", "msgnn",
                 "--weights", str(weights), "--device", "cpu"]) == 0


def test_training_crop_too_small_for_the_graph(tmp_path):
    from derainkit.train import RunConfig, train

    cfg = RunConfig(model="msgnn", model_config=dict(n_subnets=2, m_blocks=1, channels=8), crop=16, batch=1,
                    iterations=1, val_data=None, out_dir=str(tmp_path / "runs"), device="cpu")
    with pytest.raises(ConfigError, match="crop=16 is smaller"):
        train(cfg, progress=False)
    assert issubclass(InputSizeError, DerainkitError)
