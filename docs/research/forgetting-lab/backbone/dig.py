import sys; sys.path.insert(0, "/work/main")
from rich.console import Console
from zkapex_flwr.pipeline import preset, run_local
for spec in sys.argv[1:]:
    seed, glr, pe = spec.split(":")
    cfg = preset("vit", "digits", seed=int(seed), global_lr=float(glr), personal_epochs=int(pe), baselines=("no-op",), mia_references=1)
    r = run_local(cfg, console=Console(file=open("/dev/null", "w")))
    print(spec, round(r["personalization_acc_before"], 3), round(r["forget_acc_before"], 3), flush=True)
