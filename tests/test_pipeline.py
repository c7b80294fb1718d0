"""`zkapex local` end to end (short schedules): metrics.json keys, baselines, reproducibility, errors."""

import json

import pytest

from simulations.cli import main
from zkapex_flwr.pipeline import METRIC_KEYS, preset, run_local
from zkapex_flwr.unlearning.scope import VERIFIED_SCOPE

REQUIRED = [
    "personalization_acc_before",
    "personalization_acc_after",
    "recovery",
    "forget_acc_before",
    "forget_acc_after",
    "mia_auc_after",
    "mia_tpr_at_1pct_fpr_after",
    "loss_mia_auc_after",
    "kkt_max_residual",
    "baselines",
]


def test_cli_vit_digits_writes_metrics_and_is_reproducible(tmp_path):
    # random init: the preset's letter-pretrained backbone has its own test (test_backbone.py)
    args = ["local", "--model", "vit", "--dataset", "digits", "--global-epochs", "6", "--personal-epochs", "4"]
    args += ["--backbone", "none"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    for key in REQUIRED:
        assert key in a
    assert set(a["baselines"]) == {"zk-apex-paper", "no-op", "mask-only", "mask-finetune", "retrain", "head-row"}
    for row in a["baselines"].values():
        assert set(METRIC_KEYS) <= set(row)
    # the verified default: fc1 of every block plus the classifier head, 8 % masked, damping 1
    assert a["config"]["scope"] == VERIFIED_SCOPE and a["config"]["damping"] == 1.0
    assert a["masked_weights"] == round(0.08 * a["scope_weights"])
    assert not a["config"]["client_keeps_forget"]  # the request covers the federation: retrain can forget
    # the head-row baseline zeroes the forget class's classifier row: it can no longer predict the class
    assert a["baselines"]["head-row"]["forget_acc_after"] == 0.0
    assert a["kkt_max_residual"] <= 1e-9
    assert a["baselines"]["no-op"]["recovery"] == 1.0
    assert a["baselines"]["mask-only"]["kkt_max_residual"] > 1e-3  # the certificate rejects plain masking
    assert (tmp_path / "a" / "metrics.png").stat().st_size > 0
    for key in (
        "personalization_acc_after",
        "forget_acc_after",
        "mia_auc_after",
        "mia_tpr_at_1pct_fpr_after",
        "masked_weights",
    ):
        assert a[key] == b[key], key  # same seed, same numbers


def test_opt_stdlib_code_small_run():
    cfg = preset(
        "opt",
        "stdlib-code",
        global_epochs=1,
        personal_epochs=1,
        max_provider_seqs=400,
        max_client_seqs=150,
        model_kwargs=dict(hidden=64, layers=2, ffn=128, heads=2),
        baselines=("no-op", "mask-only"),
        mia_references=1,
    )
    result = run_local(cfg)
    assert result["kkt_max_residual"] <= 1e-9
    assert 0.0 < result["personalization_acc_before"] < 1.0
    assert result["masked_weights"] == round(cfg.mask_fraction * result["scope_weights"])
    assert result["recovery"] > result["baselines"]["mask-only"]["recovery"] - 1e-6


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["local", "--model", "opt", "--dataset", "digits", "--out", str(tmp_path)]) == 2
    assert "no preset for model 'opt' on dataset 'digits'" in capsys.readouterr().err
    assert (
        main(["local", "--model", "vit", "--dataset", "digits", "--forget-classes", "11", "--out", str(tmp_path)]) == 2
    )
    assert "class 11 is outside 0..9" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown config option"):
        preset("vit", "digits", bogus=1)
    # settings are checked before any training starts
    assert main(["local", "--model", "vit", "--dataset", "digits", "--mask-fraction", "2", "--out", str(tmp_path)]) == 2
    assert "mask fraction must be in (0, 1), got 2.0" in capsys.readouterr().err
    assert main(["local", "--model", "opt", "--mask-sizing", "membership", "--out", str(tmp_path)]) == 2
    assert "needs a provider holdout" in capsys.readouterr().err  # code data has no provider holdout
    with pytest.raises(ValueError, match="unknown baseline"):
        preset("vit", "digits", baselines=("oracle",))


def test_sample_request_mask_stays_off_the_class_head():
    import torch

    from zkapex_flwr.unlearning import BlockLayout, select_mask
    from zkapex_flwr.unlearning.scope import CLASSIFIER_HEAD

    cfg = preset("vit", "digits", forget_mode="samples")
    assert cfg.mask_exclude == CLASSIFIER_HEAD and cfg.mask_fraction == 0.16
    from zkapex_flwr.models import build_vit

    layout = BlockLayout.from_model(build_vit((1, 8, 8), 10, embed_dim=32, depth=2, num_heads=2), 16, VERIFIED_SCOPE)
    head = layout.tensor_mask(CLASSIFIER_HEAD)
    scores = torch.rand(layout.size, dtype=torch.float64) + 10.0 * head  # the head scores highest
    mask = select_mask(scores, layout, 0.1, exclude=CLASSIFIER_HEAD)
    assert not head[mask.indices].any() and len(mask) == round(0.1 * layout.size)
    assert head[select_mask(scores, layout, 0.01).indices].all()  # without the exclusion it would take the head
    with pytest.raises(ValueError, match="covers the whole unlearning scope"):
        select_mask(scores, layout, 0.1, exclude=".")
    bad = scores.clone()
    bad[0] = float("-inf")  # a caller's -inf is refused even where the exclusion adds its own
    with pytest.raises(ValueError, match="NaN or inf"):
        select_mask(bad, layout, 0.1, exclude=CLASSIFIER_HEAD)


@pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")
def test_local_run_with_real_proof_is_verified_compliant():
    cfg = preset(
        "vit",
        "digits",
        global_epochs=4,
        personal_epochs=2,
        block_size=16,
        mask_fraction=0.02,
        max_blocks=12,
        baselines=("no-op",),
        prove=True,
        mia_references=1,
        model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0),
        backbone="none",
    )
    result = run_local(cfg)
    proof = result["proof"]
    assert proof["verdict"] == "compliant", proof["detail"]
    assert result["touched_blocks"] <= 12
    assert proof["steps"] >= result["touched_blocks"]
    assert proof["proof_bytes"] > 0 and proof["verify_ms"] > 0
    # the proven (fixed-point) update is the float64 Group-OBS update up to the fixed-point grid
    assert proof["max_abs_gap_to_float64_update"] < 1e-3
