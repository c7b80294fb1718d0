"""`zkapex local` end to end (short schedules): metrics.json keys, baselines, reproducibility, errors."""
import json

import pytest

from zkapex_flwr.cli import main
from zkapex_flwr.pipeline import METRIC_KEYS, preset, run_local

REQUIRED = ["personalization_acc_before", "personalization_acc_after", "recovery", "forget_acc_before",
            "forget_acc_after", "mia_auc_after", "kkt_max_residual", "baselines"]


def test_cli_vit_digits_writes_metrics_and_is_reproducible(tmp_path):
    args = ["local", "--model", "vit", "--dataset", "digits", "--global-epochs", "6", "--personal-epochs", "4"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    for key in REQUIRED:
        assert key in a
    assert set(a["baselines"]) == {"no-op", "mask-only", "mask+finetune", "retrain"}
    for row in a["baselines"].values():
        assert set(METRIC_KEYS) <= set(row)
    assert a["kkt_max_residual"] <= 1e-9
    assert a["baselines"]["no-op"]["recovery"] == 1.0
    assert a["baselines"]["mask-only"]["kkt_max_residual"] > 1e-3  # the certificate rejects plain masking
    assert (tmp_path / "a" / "metrics.png").stat().st_size > 0
    for key in ("personalization_acc_after", "forget_acc_after", "mia_auc_after", "masked_weights"):
        assert a[key] == b[key], key  # same seed, same numbers


def test_opt_stdlib_code_small_run():
    cfg = preset("opt", "stdlib-code", global_epochs=1, personal_epochs=1, max_provider_seqs=400,
                 max_client_seqs=150, model_kwargs=dict(hidden=64, layers=2, ffn=128, heads=2),
                 baselines=("no-op", "mask-only"))
    result = run_local(cfg)
    assert result["kkt_max_residual"] <= 1e-9
    assert 0.0 < result["personalization_acc_before"] < 1.0
    assert result["masked_weights"] == round(0.04 * result["scope_weights"])
    assert result["recovery"] > result["baselines"]["mask-only"]["recovery"] - 1e-6


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["local", "--model", "opt", "--dataset", "digits", "--out", str(tmp_path)]) == 2
    assert "no preset for model 'opt' on dataset 'digits'" in capsys.readouterr().err
    assert main(["local", "--model", "vit", "--dataset", "digits", "--forget-classes", "11",
                 "--out", str(tmp_path)]) == 2
    assert "class 11 is outside 0..9" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown config option"):
        preset("vit", "digits", bogus=1)


@pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")
def test_local_run_with_real_proof_is_verified_compliant():
    cfg = preset("vit", "digits", global_epochs=4, personal_epochs=2, block_size=16, mask_fraction=0.02,
                 max_blocks=12, baselines=("no-op",), prove=True,
                 model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0))
    result = run_local(cfg)
    proof = result["proof"]
    assert proof["verdict"] == "compliant", proof["detail"]
    assert result["touched_blocks"] <= 12
    assert proof["steps"] >= result["touched_blocks"]
    assert proof["proof_bytes"] > 0 and proof["verify_ms"] > 0
    # the proven (fixed-point) update is the float64 Group-OBS update up to the fixed-point grid
    assert proof["max_abs_gap_to_float64_update"] < 1e-3
