"""The fleet's ServerApp for ``flwr run .``: the scenario and output folder come from the run config.

    flwr run . --stream                                        # simulations/default.toml → runs/default
    flwr run . --stream --run-config "scenario='simulations/smoke.toml' out='runs/smoke'"
    flwr run . <federation> --run-config "... resume=true"  # a restarted provider keeps its registry and ledger
"""
from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from simulations.runner import PROJECT_ROOT, provider_main, resolve_scenario
    from simulations.scenario import load_scenario

    path = resolve_scenario(str(context.run_config["scenario"]))
    out = str(context.run_config.get("out", "") or PROJECT_ROOT / "runs" / load_scenario(path).name)
    provider_main(grid, path, out, resume=bool(context.run_config.get("resume", False)))
