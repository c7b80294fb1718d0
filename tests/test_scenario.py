"""Scenario files: overrides (--set and Flower's run config), pydantic errors, `zkapex scenario check`,
`zkapex local` argument checks, the SuperNode-count check, behaviours by name, offline nodes and the
hub adapters (flwr-datasets and timm calls checked with stand-ins: no download). All fast."""

import textwrap
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from simulations.cli import main
from simulations.scenario import ScenarioError, load_scenario, parse_overrides, run_config_overrides, summary_line

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "simulations" / "smoke.toml"
MINI = """
clients = 4
seed = 0
[model]
embed_dim = 16
depth = 1
num_heads = 2
[training]
rounds = 1
[[requests]]
id = "r"
after_round = 1
classes = [3]
[profiles.edge]
shift = "none"
[behaviours]
honest = 3
{cheat} = 1
"""


def write(tmp_path, text: str, name: str = "sc.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# ------------------------------------------------------------------------------------ overrides
def test_overrides_from_set_and_run_config_give_the_same_scenario():
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    base = load_scenario(SMOKE)
    assert base.training.rounds == 1 and base.unlearning.mask_fraction == 0.01 and base.overrides == ()
    assert base.unlearning.commit_deadline_s == 300.0  # the commit round waits behind other nodes on 2 cores
    sets = parse_overrides(
        [
            "training.rounds=2",
            "unlearning.mask-fraction=0.02 unlearning.steps=[1]",
            "profiles.phone.availability=0.9",
            "behaviours.garbage-proof=2",
            "behaviours.honest=6",
        ]
    )
    sc = load_scenario(SMOKE, sets)
    assert sc.training.rounds == 2 and sc.unlearning.mask_fraction == 0.02 and sc.unlearning.steps == (1,)
    assert sc.profile("phone").availability == 0.9 and dict(sc.behaviours)["garbage-proof"] == 2.0
    assert sc.training.rounds_after == base.training.rounds_after  # the file stays the base
    assert sc.digest != base.digest
    # `flwr run . --run-config ...`: Flower fuses pyproject's [tool.flwr.app.config] with the overrides
    rc = get_fused_config_from_dir(
        ROOT,
        parse_config_args(
            ["scenario='simulations/smoke.toml' training.rounds=2 unlearning.mask_fraction=0.02 unlearning.steps='1'"]
        ),
    )
    assert rc["seed"] == "" and rc["supernode-wait-s"] == 30.0  # "" = the scenario file's value
    over = run_config_overrides(rc)
    assert over == {"training.rounds": 2, "unlearning.mask_fraction": 0.02, "unlearning.steps": "1"}
    via_rc = load_scenario(SMOKE, over)
    assert via_rc.training == sc.training and via_rc.unlearning == sc.unlearning
    # the nested-table form of a run-config file flattens to the same keys
    assert run_config_overrides({"training.rounds": 3, "out": "x", "resume": True}) == {"training.rounds": 3}


def test_bad_overrides_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ScenarioError, match="expected KEY=VALUE"):
        parse_overrides(["training.rounds"])
    with pytest.raises(
        ScenarioError,
        match=r"smoke.toml \[training\] rounds: Input should be a valid integer "
        r"\(got 'two'\) \(set by override training.rounds='two'\)",
    ):
        load_scenario(SMOKE, parse_overrides(["training.rounds=two"]))
    with pytest.raises(ScenarioError, match=r"'clients' is not a table"):
        load_scenario(SMOKE, {"clients.x": 1})
    with pytest.raises(ScenarioError, match=r"'requests' has 1 entries"):
        load_scenario(SMOKE, {"requests.3.after_round": 1})
    assert main(["scenario", "check", str(SMOKE), "--set", "unlearning.mask_fraction=-0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[unlearning] mask_fraction must be in (0, 1)" in err and "Traceback" not in err


# --------------------------------------------------------------------------------- pydantic errors
def test_type_errors_and_unknown_keys_name_file_and_key(tmp_path):
    bad = write(tmp_path, MINI.format(cheat="garbage-proof").replace("rounds = 1", 'rounds = "two"'), "bad.toml")
    with pytest.raises(ScenarioError) as e:
        load_scenario(bad)
    assert str(e.value) == f"{bad} [training] rounds: Input should be a valid integer (got 'two')"
    bad = write(tmp_path, MINI.format(cheat="garbage-proof").replace("shift = ", "speeed = 2\nshift = "), "bad.toml")
    with pytest.raises(ScenarioError, match=r"bad.toml \[profiles.edge\]: unknown key\(s\) \['speeed'\]; allowed: "):
        load_scenario(bad)
    bad = write(tmp_path, "wat = 1\n" + MINI.format(cheat="garbage-proof"), "bad.toml")
    with pytest.raises(ScenarioError, match=r"bad.toml: unknown top-level key\(s\) \['wat'\]"):
        load_scenario(bad)
    bad = write(tmp_path, MINI.format(cheat="garbage-proof").replace("embed_dim = 16", "embed_dim = 16.5"), "bad.toml")
    with pytest.raises(ScenarioError, match=r"bad.toml \[model\] embed_dim: Input should be a valid integer"):
        load_scenario(bad)
    bad = write(
        tmp_path, MINI.format(cheat="garbage-proof").replace("classes = [3]", "classes = [3]\nwhen = 1"), "bad.toml"
    )
    with pytest.raises(ScenarioError, match=r"bad.toml \[\[requests\]\] #1: unknown key\(s\) \['when'\]"):
        load_scenario(bad)
    # the dead setting is gone
    with pytest.raises(ScenarioError, match=r"\[data\]: unknown key\(s\) \['client_holdout'\]"):
        load_scenario(SMOKE, {"data.client_holdout": 0.2})
    # the frozen attribute access the rest of the code uses
    sc = load_scenario(SMOKE)
    assert isinstance(sc.unlearning.steps, tuple) and sc.source == str(SMOKE) and len(sc.digest) == 64
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        sc.training.rounds = 5


def test_scenario_check_exit_codes(tmp_path, capsys):
    assert main(["scenario", "check", str(SMOKE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("smoke: 20 clients (8 honest, 12 dishonest)") and "forget-class-3" in out
    assert main(["scenario", "check", str(SMOKE), "--set", "clients=16", "--set", "behaviours.honest=3"]) == 0
    assert "smoke: 16 clients" in capsys.readouterr().out
    # an MPU request of a client the fleet no longer has is a one-line error naming it
    assert main(["scenario", "check", str(SMOKE), "--set", "clients=10", "--set", "behaviours.honest=0"]) == 2
    assert "[[mpu_requests]] #1: partition 15 is not in 0..9" in capsys.readouterr().err
    assert main(["scenario", "check", str(ROOT / "simulations" / "munkey.toml")]) == 0
    assert capsys.readouterr().out.startswith("munkey: a MUNKEY fleet of 16 clients")
    bad = write(tmp_path, MINI.format(cheat="garbage-proof").replace("rounds = 1", 'rounds = "two"'), "bad.toml")
    assert main(["scenario", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"zkapex: error: {bad} [training] rounds: Input should be a valid integer (got 'two')\n"
    assert main(["scenario", "check", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_shipped_scenario_is_valid():
    from simulations.munkey_fleet import is_munkey_scenario, load_munkey_scenario

    for f in sorted((ROOT / "simulations").glob("*.toml")):
        if is_munkey_scenario(f):  # method = "munkey": its own scenario model
            assert load_munkey_scenario(f).clients >= 2, f
            continue
        sc = load_scenario(f)
        assert sc.clients == sum(sc.behaviour_counts().values()), f
        assert summary_line(sc).startswith(sc.name)


# ------------------------------------------------------------------------------------ zkapex local
def test_local_rejects_bad_arguments_before_training(tmp_path, capsys):
    for args, msg in (
        (["--mask-fraction", "2"], "mask fraction must be in (0, 1), got 2.0"),
        (["--group-positions", "0"], "--group-positions must be >= 1"),
        (["--num-grads", "0"], "--num-grads must be >= 1"),
        (["--forget-classes", "3,x"], "--forget-classes must be comma-separated integers"),
        (["--forget-mode", "package"], "--forget-mode package does not apply to digits"),
        (["--slots", "0"], "--slots must be >= 1"),
    ):
        t0 = time.perf_counter()
        assert main(["local", "--out", str(tmp_path / "x"), *args]) == 2, args
        assert time.perf_counter() - t0 < 5.0, args  # nothing was loaded or trained
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------- SuperNode count
class _Grid:
    def __init__(self, n):
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


def test_too_few_supernodes_fail_fast_naming_both_numbers():
    from simulations.runner import FleetSizeError, wait_for_nodes

    assert wait_for_nodes(_Grid(4), 4, timeout_s=0.1) == [1, 2, 3, 4]
    t0 = time.monotonic()
    with pytest.raises(FleetSizeError) as e:
        wait_for_nodes(_Grid(10), 20, timeout_s=0.3, scenario="smoke.toml", poll_s=0.05)
    assert time.monotonic() - t0 < 2.0
    msg = str(e.value)
    assert "needs 20 SuperNodes (clients = 20) but 10 connected within 0.3 s" in msg
    assert '--federation-config "num-supernodes=20"' in msg and "\n" not in msg


def test_provider_checks_the_fleet_size_before_any_work(tmp_path):
    from simulations.runner import FleetSizeError, provider_main

    with pytest.raises(FleetSizeError, match="needs 20 SuperNodes"):
        provider_main(_Grid(3), SMOKE, tmp_path / "out", supernode_wait_s=0.1)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ behaviours by name
def flip_hook(prover, mask, req, context):  # a custom behaviour named as "module:function"
    return b"flipped"


def test_behaviours_by_registry_name_and_by_module_path(tmp_path, monkeypatch):
    from simulations.behaviours import register_behaviour, registered_behaviours, resolve_behaviour
    from simulations.fleet import node_setup

    @register_behaviour("test-custom-cheat", replace=True)
    def custom(prover, mask, req, context, *, client):
        return f"custom {client.partition_id}".encode()

    assert "test-custom-cheat" in registered_behaviours() and resolve_behaviour("garbage-proof") is not None
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    path_name = "test_scenario:flip_hook"
    text = MINI.format(cheat="test-custom-cheat").replace("honest = 3", f'honest = 2\n"{path_name}" = 1')
    sc_file = write(tmp_path, text)
    sc = load_scenario(sc_file)
    by_behaviour = {c.behaviour: c.partition_id for c in sc.fleet()}
    assert set(by_behaviour) == {"honest", "test-custom-cheat", path_name}
    hooks = {}
    for b, pid in by_behaviour.items():
        ctx = Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid}, state=RecordDict(), run_config={})
        hooks[b] = node_setup(ctx, str(sc_file), str(tmp_path / "out")).bundle_hook
    assert hooks["honest"] is None
    assert hooks["test-custom-cheat"](None, None, None, None) == f"custom {by_behaviour['test-custom-cheat']}".encode()
    assert hooks[path_name](None, None, None, None) == b"flipped"
    # a bad path is a one-line scenario error
    for bad, msg in (
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("os.path:nothere", "module 'os.path' has no attribute 'nothere'"),
        ("sneaky", "unknown behaviour 'sneaky'"),
    ):
        f = write(tmp_path, MINI.format(cheat=f'"{bad}"'), "bad.toml")
        with pytest.raises(ScenarioError, match=rf"bad.toml: \[behaviours\] .*{msg}"):
            load_scenario(f)


def test_offline_node_answers_with_a_flower_error_reply(tmp_path, task_identity, caplog):
    from flwr.common.constant import ErrorCode

    from simulations.fleet import dropout_mod_for

    sc_file = write(
        tmp_path, MINI.format(cheat="garbage-proof").replace('shift = "none"', 'shift = "none"\navailability = 0.01')
    )
    mod = dropout_mod_for(str(sc_file))
    ctx = Context(run_id=1, node_id=100, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    called = []
    replies = []
    for rnd in range(1, 6):
        msg = Message(
            RecordDict({"config": ConfigRecord({"server-round": rnd})}), dst_node_id=100, message_type="train"
        )
        replies.append(mod(msg, ctx, lambda m, c: called.append(m)))
    assert not called and all(r.has_error() for r in replies)
    assert {r.error.code for r in replies} == {ErrorCode.NODE_UNAVAILABLE}
    assert "offline" in replies[0].error.reason and "Traceback" not in caplog.text


# ----------------------------------------------------------------------------------- hub adapters
class _FakeFDS:
    """Stands in for flwr_datasets.FederatedDataset: records its arguments, serves a small image split."""

    calls: ClassVar[list] = []

    def __init__(self, **kwargs):
        _FakeFDS.calls.append(kwargs)

    def load_split(self, split):
        import datasets
        from PIL import Image

        g = torch.Generator().manual_seed(0)
        imgs = [Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(200)]
        return datasets.Dataset.from_dict({"img": imgs, "label": [i % 10 for i in range(200)]})


def test_hub_dataset_and_timm_model_in_a_scenario(tmp_path, monkeypatch):
    import flwr_datasets
    import timm

    from simulations.fleet import FleetWorld
    from zkapex_flwr.models import build_vit

    made = []

    def fake_create_model(name, **kwargs):
        made.append((name, kwargs))
        return build_vit(
            (kwargs["in_chans"], *kwargs["img_size"]), kwargs["num_classes"], embed_dim=16, depth=1, num_heads=2
        )

    _FakeFDS.calls = []
    monkeypatch.setattr(flwr_datasets, "FederatedDataset", _FakeFDS)
    monkeypatch.setattr(timm, "create_model", fake_create_model)
    text = MINI.format(cheat="garbage-proof").replace(
        "[model]\nembed_dim = 16\ndepth = 1\nnum_heads = 2",
        (
            '[model]\nkind = "timm:vit_tiny_patch16_224"\n'
            '[data]\ndataset = "hf:uoft-cs/cifar10"\nimage_key = "img"\npartitioner = "iid"\nmax_samples = 120'
        ),
    )
    sc = load_scenario(write(tmp_path, text))
    world = FleetWorld(sc)
    assert _FakeFDS.calls == [
        {"dataset": "uoft-cs/cifar10", "subset": None, "partitioners": {"train": 1}, "shuffle": True, "seed": 0}
    ]
    assert world.image_shape == (3, 8, 8) and len(world.y) == 120
    assert sum(len(world.parts[i]) for i in range(4)) == 120 - round(120 * 0.15) - round(120 * 0.3)
    model = world.model()
    assert made == [
        ("vit_tiny_patch16_224", {"pretrained": False, "num_classes": 10, "in_chans": 3, "img_size": (8, 8)})
    ]
    assert model(world.client_data(0)[0].tensors[0][:2]).shape == (2, 10)


def test_flwr_datasets_partitioners_by_name():
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    from zkapex_flwr.data.hub import make_partitioner, partition_indices

    p = make_partitioner("pathological", 4, alpha=0.5, seed=1, num_classes_per_partition=2)
    assert isinstance(p, PathologicalPartitioner) and p._num_classes_per_partition == 2
    labels = torch.arange(200) % 10
    parts = partition_indices(labels, p)
    assert len(parts) == 4 and all(len(torch.unique(labels[ix])) <= 2 for ix in parts)
    assert isinstance(make_partitioner("dirichlet", 3, alpha=0.3), DirichletPartitioner)
    with pytest.raises(ValueError, match="takes no option"):
        make_partitioner("iid", 3, num_classes_per_partition=2)
    with pytest.raises(ValueError, match="unknown partitioner"):
        make_partitioner("random", 3)


def test_transformers_lm_through_auto_class(monkeypatch):
    import transformers

    from zkapex_flwr.models import create_lm
    from zkapex_flwr.training import resolve_device

    seen = []
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM,
        "from_pretrained",
        classmethod(lambda cls, name, **kw: seen.append((name, kw)) or "lm"),
    )
    assert create_lm("hf:facebook/opt-125m") == "lm"
    assert seen == [("facebook/opt-125m", {"attn_implementation": "eager"})]
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_transformers_image_classifier_is_a_fleet_model(tmp_path):
    """``hf:<name>`` builds a transformers classifier from its config (here a local one: no download) that
    the tasks, the Fisher and the scope see as images -> logits."""
    from transformers import ViTConfig

    from zkapex_flwr.models import create_image_model
    from zkapex_flwr.tasks import ImageTask
    from zkapex_flwr.unlearning import BlockFisher, BlockLayout

    ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    ).save_pretrained(tmp_path / "tiny-vit")
    model = create_image_model(f"hf:{tmp_path / 'tiny-vit'}", (1, 8, 8), 10)
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 10
    assert model(x).shape == (6, 10)  # this data's channels and classes, not the config's
    layout = BlockLayout.from_model(model, 16, r"(^|\.)fc1\.weight$")  # the fleet's scope finds its MLP
    from zkapex_flwr.data.tensors import TensorData

    fisher = BlockFisher.estimate(model, ImageTask(), TensorData((x, y)), layout, num_grads=6)
    assert fisher.num_samples == 6 and layout.size == 32 * 16
