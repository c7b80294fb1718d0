"""The fleet's ServerApp for ``flwr run .``: the scenario, its overrides and the output folder come from the run config.

    flwr run . --stream                                        # simulations/default.toml → runs/default
    flwr run . --stream --run-config "scenario='simulations/smoke.toml' out='runs/smoke'" \\
        --federation-config "num-supernodes=20"
    flwr run . --stream --run-config "training.rounds=3 unlearning.mask_fraction=0.02"   # scenario overrides
    flwr run . <federation> --run-config "... resume=true"  # a restarted provider keeps its registry and ledger

Every key of ``[tool.flwr.app.config]`` other than ``scenario``, ``out``, ``resume`` and
``supernode-wait-s`` is a scenario key; its value there is "" (the scenario file's value) unless
``--run-config`` sets it. The ClientApps read the same run config, so they build the same fleet.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from simulations.munkey_fleet import is_munkey_scenario, load_munkey_scenario, munkey_provider_main
    from simulations.runner import PROJECT_ROOT, SUPERNODE_WAIT_S, provider_main, resolve_scenario
    from simulations.scenario import load_scenario, run_config_overrides

    rc = context.run_config
    path = resolve_scenario(str(rc["scenario"]))
    overrides = run_config_overrides(rc)
    if is_munkey_scenario(path):  # method = "munkey": a MUNKEY fleet (docs/munkey.md)
        out = str(rc.get("out", "") or PROJECT_ROOT / "runs" / load_munkey_scenario(path, overrides).name)
        munkey_provider_main(
            grid,
            path,
            out,
            resume=bool(rc.get("resume", False)),
            overrides=overrides,
            supernode_wait_s=float(rc.get("supernode-wait-s", SUPERNODE_WAIT_S)),
        )
        return
    out = str(rc.get("out", "") or PROJECT_ROOT / "runs" / load_scenario(path, overrides).name)
    provider_main(
        grid,
        path,
        out,
        resume=bool(rc.get("resume", False)),
        overrides=overrides,
        supernode_wait_s=float(rc.get("supernode-wait-s", SUPERNODE_WAIT_S)),
    )
