"""Merge results.jsonl (bench) with remeasure.log (clean prove-only RSS/time) -> markdown table + fits."""
import json, numpy as np
R = {}
for l in open("results.jsonl"):
    r = json.loads(l); R[r["name"]] = r
for l in open("remeasure.log"):
    try: m = json.loads(l)
    except Exception: continue
    if m["name"] in R:
        R[m["name"]]["prove2_s"] = round(m["prove2"]["prove_s"], 2); R[m["name"]]["rss_mb"] = round(m["rss_kb"] / 1024)
rows = sorted(R.values(), key=lambda r: (r["form"], r["irc"], r["rc"], r["d"], r["B"], r["K"]))
print("| form | d | K slots | B | irc | rc | masked | logrows | rows | inputs | setup s | prove s (bench / clean) | peak RSS MB | verify ms | pk MB | vk KB | proof raw B | proof JSON KB | prove ms / masked | proof B / masked |")
print("|" + "---|" * 20)
for r in rows:
    p2 = r.get("prove2_s", "-"); best = min(r["prove_s"], p2) if p2 != "-" else r["prove_s"]
    print(f"| {r['form']} | {r['d']} | {r['K'] or '-'} | {r['B']} | {int(r['irc'])} | {int(r['rc'])} | {r['masked']} | {r['logrows']} | {r['rows']} | {r['num_inputs']} | {r['setup_s']} | {r['prove_s']} / {p2} | {r.get('rss_mb','-')} | {r['verify_ms']} | {r['pk_bytes']/1e6:.0f} | {r['vk_bytes']/1e3:.1f} | {r['proof_raw_bytes']} | {r['proof_json_bytes']/1e3:.0f} | {1000*best/r['masked']:.0f} | {r['proof_raw_bytes']/r['masked']:.0f} |")
# fit: log t = a + b*log(2^L) + c*log(n_inputs)   (range checks off, rc off)
pts = [r for r in rows if r["irc"] and not r["rc"]]
X = np.array([[1, r["logrows"] * np.log(2), np.log(r["num_inputs"])] for r in pts])
y = np.log([min(r["prove_s"], r.get("prove2_s", 1e9)) for r in pts])
coef, *_ = np.linalg.lstsq(X, y, rcond=None)
print("\nfit prove_s = exp(%.2f) * (2^L)^%.2f * n_inputs^%.2f" % tuple(coef))
for r, yy in zip(pts, X @ coef):
    print(f"  {r['name']:34s} measured {np.exp(y[pts.index(r)]):6.2f}  model {np.exp(yy):6.2f}")
Xr = np.array([[1, r["logrows"] * np.log(2), np.log(r["num_inputs"])] for r in pts if "rss_mb" in r])
yr = np.log([r["rss_mb"] for r in pts if "rss_mb" in r])
if len(yr) >= 3:
    c2, *_ = np.linalg.lstsq(Xr, yr, rcond=None)
    print("fit rss_MB = exp(%.2f) * (2^L)^%.2f * n_inputs^%.2f" % tuple(c2))
Xp = np.array([[1, r["logrows"] * np.log(2), np.log(r["num_inputs"])] for r in pts])
cp, *_ = np.linalg.lstsq(Xp, np.log([r["pk_bytes"] for r in pts]), rcond=None)
print("fit pk_bytes = exp(%.2f) * (2^L)^%.2f * n_inputs^%.2f" % tuple(cp))
pl = np.polyfit([r["num_inputs"] for r in pts], [r["proof_raw_bytes"] for r in pts], 1)
print("fit proof_raw_bytes = %.0f * n_inputs + %.0f" % tuple(pl))
