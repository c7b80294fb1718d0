"""The ``zkapex`` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got '{text}'") from None


def check_local_args(args: argparse.Namespace) -> tuple[int, ...] | None:
    """Every ``zkapex local`` argument checked before anything is loaded or trained (a one-line ValueError).

    Returns the parsed forget classes."""
    image = args.dataset in ("digits", "mnist")
    classes = _int_list(args.forget_classes, "--forget-classes") if args.forget_classes else None
    checks = [
        (
            args.mask_fraction is None or 0 < args.mask_fraction < 1,
            f"mask fraction must be in (0, 1), got {args.mask_fraction}",
        ),
        (args.block_size is None or args.block_size >= 1, f"--block-size must be >= 1, got {args.block_size}"),
        (args.max_blocks is None or args.max_blocks >= 1, f"--max-blocks must be >= 1, got {args.max_blocks}"),
        (args.group is None or args.group >= 1, f"--group must be >= 1, got {args.group}"),
        (
            args.group_positions is None or args.group_positions >= 1,
            f"--group-positions must be >= 1, got {args.group_positions}",
        ),
        (args.damping is None or args.damping >= 0, f"damping must be non-negative, got {args.damping}"),
        (args.num_grads is None or args.num_grads >= 1, f"--num-grads must be >= 1, got {args.num_grads}"),
        (args.forget_count is None or args.forget_count >= 1, f"--forget-count must be >= 1, got {args.forget_count}"),
        (
            classes is None or (classes and image),
            "--forget-classes applies to image datasets (digits, mnist)"
            if not image
            else "--forget-classes names no class",
        ),
        (
            classes is None or not image or all(0 <= c <= 9 for c in classes),
            f"forget_classes: class {next((c for c in classes or () if not 0 <= c <= 9), '')} is outside 0..9",
        ),
        (args.forget_package is None or not image, "--forget-package applies to the code dataset (stdlib-code)"),
        (
            args.forget_mode is None or (args.forget_mode in ("class", "samples")) == image,
            f"--forget-mode {args.forget_mode} does not apply to {args.dataset}; "
            + ("use class or samples" if image else "use package"),
        ),
        (
            args.mia_references is None or args.mia_references >= 1,
            f"the membership attack needs at least one reference model, got --mia-references {args.mia_references}",
        ),
        (args.slots is None or args.slots >= 1, f"--slots must be >= 1, got {args.slots}"),
        (args.steps is None or args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (
            args.global_epochs is None or args.global_epochs >= 0,
            f"--global-epochs must be >= 0, got {args.global_epochs}",
        ),
        (
            args.personal_epochs is None or args.personal_epochs >= 0,
            f"--personal-epochs must be >= 0, got {args.personal_epochs}",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    return classes


def _local(args: argparse.Namespace) -> int:
    forget_classes = check_local_args(args)  # before the heavy imports and any training
    from rich.console import Console
    from rich.table import Table

    from zkapex_flwr.pipeline import preset, run_local

    cfg = preset(
        args.model,
        args.dataset,
        method=args.method,
        seed=args.seed,
        mask_fraction=args.mask_fraction,
        mask_sizing=args.mask_sizing,
        block_size=args.block_size,
        max_blocks=args.max_blocks,
        damping=args.damping,
        num_grads=args.num_grads,
        fisher_data=args.fisher_data,
        forget_mode=args.forget_mode,
        forget_classes=forget_classes,
        forget_package=args.forget_package,
        forget_count=args.forget_count,
        client_keeps_forget=True if args.client_keeps_forget else None,
        mia_references=args.mia_references,
        global_epochs=args.global_epochs,
        personal_epochs=args.personal_epochs,
        backbone=args.backbone,
        prove=args.prove,
        slots=args.slots,
        steps=args.steps,
        group=args.group,
        group_positions=args.group_positions,
    )
    console = Console(stderr=True)
    result = run_local(cfg, args.out, console=console)
    from rich import box

    cols = {
        "personalization_acc_after": "pers acc",
        "recovery": "recovery",
        "forget_acc_after": "forget",
        "mia_auc_after": "RMIA AUC",
        "mia_tpr_at_1pct_fpr_after": "TPR@1%",
        "client_s": "secs",
    }
    table = Table(
        title=f"zkapex local: {cfg.model} on {cfg.dataset}, forget {_request(cfg)} (seed {cfg.seed})\n"
        f"before unlearning: pers acc {result['personalization_acc_before']:.3f}, forget acc "
        f"{result['forget_acc_before']:.3f}, RMIA AUC {result['mia_auc_before']:.3f}",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    table.add_column("method", no_wrap=True, min_width=13)
    for key, label in cols.items():
        table.add_column(label, justify="right", no_wrap=True, min_width=len(label))
    for name, row in {args.method: result, **result["baselines"]}.items():
        table.add_row(name, *(f"{row[k]:.1f}" if k == "client_s" else f"{row[k]:.3f}" for k in cols))
    Console().print(table)
    if "mask_sizing" in result:
        tried = ", ".join(f"{c['fraction']:.0%}: {c['loss_auc']:.3f}" for c in result["mask_sizing"]["candidates"])
        print(
            f"mask sized by the provider on θg: {result['mask_fraction']:.0%} of the scope (loss AUC of D_f "
            f"against its holdout ≤ {result['mask_sizing']['target']}; tried {tried})"
        )
    if "proof" in result:
        pr = result["proof"]
        print(
            f"proof: {pr['verdict']} — {pr['steps']} steps, prove {pr['prove_s']:.1f} s "
            f"({pr['prove_ms_per_masked_weight']:.0f} ms/masked weight), verify {pr['verify_ms']:.0f} ms, "
            f"{pr['proof_bytes']} proof bytes, register {pr['register_s']:.1f} s"
        )
    print(json.dumps({"out": str(args.out), "wall_s": round(result["wall_s"], 1)}))
    return 0


def _request(cfg) -> str:
    if cfg.forget_mode == "class":
        scope = "federation-wide" if not cfg.client_keeps_forget else "provider data only"
        return f"class {','.join(map(str, cfg.forget_classes))} ({scope})"
    if cfg.forget_mode == "samples":
        return f"{cfg.forget_count} random samples"
    return f"package '{cfg.forget_package}'"


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.attack and args.what != "mpu":
        raise SystemExit(f"zkapex bench: --attack is a study of 'mpu', not of {args.what!r}")
    out = Path(args.out).resolve()
    if args.what == "proof":
        from benchmarks.proof_cost import run

        run(out, args.quick, args.reps)
    elif args.what == "quality":
        from benchmarks.unlearning_quality import run

        run(out, args.quick)
    elif args.what == "load":
        from benchmarks.verify_load import run

        run(out, args.quick, args.bundles)
    elif args.what == "mpu":
        from benchmarks.mpu import run

        run(out, args.quick, attack=args.attack)
    elif args.what == "munkey":
        from benchmarks.munkey import run

        run(out, args.quick)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from simulations.munkey_fleet import is_munkey_scenario
    from simulations.runner import simulate
    from simulations.scenario import parse_overrides

    kwargs = {
        "overrides": parse_overrides(args.set),
        "cpus_per_client": args.cpus_per_client,
        "num_gpus": args.num_gpus,
        "device": args.device,
        "ray_address": args.ray_address,
    }
    if is_munkey_scenario(args.scenario):  # method = "munkey": clients run MUNKEY models (docs/munkey.md)
        summary = simulate(args.scenario, args.out, **kwargs)
        keys = ("clients", "catchable_cheaters", "cheaters_caught", "uncatchable", "honest_rejected", "wall_s")
        print(json.dumps({k: summary.get(k) for k in keys}, indent=1))
        return (
            0 if summary["honest_rejected"] == 0 and summary["cheaters_caught"] == summary["catchable_cheaters"] else 1
        )
    summary = simulate(args.scenario, args.out, **kwargs)
    keys = (
        "clients",
        "honest",
        "dishonest",
        "honest_accepted",
        "honest_rejected",
        "cheaters_caught",
        "cheaters_missed",
        "recovery_median",
        "prove_s_median",
        "proof_bytes_median",
        "verify_ms_median",
        "wall_s",
    )
    print(json.dumps({k: summary.get(k) for k in keys}, indent=1))
    return 0 if summary["honest_rejected"] == 0 and summary["cheaters_missed"] == 0 else 1


def _scenario_check(args: argparse.Namespace) -> int:
    from simulations.munkey_fleet import is_munkey_scenario, load_munkey_scenario
    from simulations.runner import resolve_scenario
    from simulations.scenario import load_scenario, parse_overrides, summary_line

    path, overrides = resolve_scenario(args.file), parse_overrides(args.set)
    if is_munkey_scenario(path):
        sc = load_munkey_scenario(path, overrides)
        print(f"{sc.name}: a MUNKEY fleet of {sc.clients} clients")
        return 0
    print(summary_line(load_scenario(path, overrides)))
    return 0


SET_HELP = (
    "override a scenario key on top of the file, e.g. --set training.rounds=3 "
    "--set unlearning.mask_fraction=0.02 (repeatable; values are TOML: 3, 0.5, true, [1, 2], 'text')"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zkapex", description="Verified machine unlearning for Flower fleets")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("local", help="one client: train, personalize, mask, unlearn, measure against baselines")
    p.add_argument("--model", choices=["vit", "opt"], default="vit")
    p.add_argument(
        "--dataset",
        choices=["digits", "mnist", "stdlib-code"],
        default=None,
        help="default: digits for vit, stdlib-code for opt",
    )
    p.add_argument("--out", required=True, help="output folder (metrics.json, metrics.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--method",
        choices=["verified", "zk-apex-paper"],
        default="verified",
        help="unlearning defaults: the verified default (fc1 + head, 8 %%, damping 1) or the paper's "
        "(fc1, 4 %%, damping 0.01)",
    )
    p.add_argument(
        "--mask-fraction",
        type=float,
        default=None,
        help="fraction of scope weights masked (0.08; 0.04 for opt); a fraction given here fixes the mask (no sizing)",
    )
    p.add_argument(
        "--mask-sizing",
        choices=["fixed", "membership"],
        default=None,
        help="membership: the provider sizes the mask per request on θg (the default for image sample "
        "requests); fixed: --mask-fraction as given",
    )
    p.add_argument("--block-size", type=int, default=None, help="Fisher block size d (64)")
    p.add_argument("--max-blocks", type=int, default=None, help="cap on touched Fisher blocks (none)")
    p.add_argument(
        "--group",
        type=int,
        default=None,
        metavar="G",
        help="G Fisher blocks per proof unit, packed into wide inputs (1)",
    )
    p.add_argument(
        "--group-positions",
        type=int,
        default=None,
        metavar="K",
        help="column-structured mask: at most K local positions per unit of G blocks (default: free)",
    )
    p.add_argument("--damping", type=float, default=None, help="Fisher damping relative to the mean diagonal (1.0)")
    p.add_argument("--num-grads", type=int, default=None, help="per-sample gradients in the client Fisher")
    p.add_argument("--fisher-data", choices=["train", "retain"], default=None)
    p.add_argument("--forget-mode", choices=["class", "samples", "package"], default=None)
    p.add_argument("--forget-classes", default=None, help="comma-separated classes to forget (image data)")
    p.add_argument("--forget-package", default=None, help="stdlib package to forget (code data)")
    p.add_argument("--forget-count", type=int, default=None, help="samples to forget with --forget-mode samples (60)")
    p.add_argument(
        "--client-keeps-forget",
        action="store_true",
        default=None,
        help="the request covers only the provider's data: clients keep their own samples of the class "
        "(default: the request covers the federation)",
    )
    p.add_argument(
        "--mia-references",
        type=int,
        default=None,
        help="reference models of the membership attack (RMIA), each a full retrain pipeline (2)",
    )
    p.add_argument(
        "--prove",
        action="store_true",
        default=None,
        help="also register, prove (EZKL) and verify the client's update; use with --block-size 16",
    )
    p.add_argument("--slots", type=int, default=None, help="K masked columns per proof step (2)")
    p.add_argument("--steps", type=int, default=None, help="B proof steps per proof (1)")
    p.add_argument("--global-epochs", type=int, default=None)
    p.add_argument(
        "--backbone",
        choices=["glyphs", "none"],
        default=None,
        help="images: start from a ViT pretrained on rendered letters (glyphs, the preset; built once per model "
        "shape and cached) or from a random init (none)",
    )
    p.add_argument("--personal-epochs", type=int, default=None)
    p.set_defaults(func=_local)
    f = sub.add_parser("simulate", help="a fleet scenario through Flower's simulation engine on Ray")
    f.add_argument("scenario", help="scenario file, e.g. simulations/smoke.toml")
    f.add_argument("--out", required=True, help="output folder (ledger, summary.json, report.md, plots)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    f.add_argument(
        "--cpus-per-client",
        type=float,
        default=None,
        help="Ray CPUs per ClientApp (resources.num_cpus; default 1: one client per core at a time)",
    )
    f.add_argument(
        "--num-gpus",
        type=float,
        default=None,
        help="Ray GPUs per ClientApp (resources.num_gpus; default 0; 0.25: four ClientApps share a GPU)",
    )
    f.add_argument("--device", default=None, help="client-side torch device (resources.device): auto, cpu or cuda")
    f.add_argument(
        "--ray-address",
        default=None,
        help="an existing Ray cluster (e.g. 'auto' or 'ray://head:10001'); default: a local one",
    )
    f.set_defaults(func=_simulate)
    sc = sub.add_parser("scenario", help="scenario files")
    sc_sub = sc.add_subparsers(dest="scenario_command", required=True)
    chk = sc_sub.add_parser("check", help="validate a scenario (with overrides) and print a short summary")
    chk.add_argument("file", help="scenario file, e.g. simulations/smoke.toml")
    chk.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    chk.set_defaults(func=_scenario_check)
    b = sub.add_parser("bench", help="benchmarks that print and save tables and plots")
    b.add_argument(
        "what",
        choices=["proof", "quality", "load", "mpu", "munkey"],
        help="proof: proof cost per circuit shape; quality: the verified update against retrain and "
        "every baseline where retrain forgets, the frontier, proof cost of the verified mask; load: verification throughput and "
        "latency over many bundles, and the provider store's writes and reads; mpu: the local unlearning algorithms "
        "under MPU's perturbed copies against Clean and Noised (--attack: the copies' reconstruction attack and the "
        "consistency screen); munkey: the key-deletion model against the plain ViT, retrain and post-hoc methods, "
        "and its deletion proofs",
    )
    b.add_argument("--out", required=True)
    b.add_argument("--quick", action="store_true", help="a few small configurations (smoke test)")
    b.add_argument("--attack", action="store_true", help="mpu: the privacy study (reconstruction from the copies)")
    b.add_argument("--reps", type=int, default=3, help="repetitions per proof-cost configuration")
    b.add_argument(
        "--bundles", type=int, default=None, help="load: verifications to time (default 1000; with --quick 40)"
    )
    b.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "local" and args.dataset is None:
        args.dataset = "digits" if args.model == "vit" else "stdlib-code"
    try:
        return args.func(args)
    except ValueError as err:
        print(f"zkapex: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
