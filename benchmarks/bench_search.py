"""Subnet search evidence on a small enumerable space (see benchmarks/search.md).

1. Train a small timm ResNet supernet on sklearn digits (plain-PyTorch sandwich loop over ``supernet.select``).
2. Measure every subnet once for real (``SubnetMeasurer``: the LightningModule's validation loop with BN
   recalibrated, exact MACs) and cache the table under ``outputs/bench_search/``.
3. For several seeds: how many real evaluations LINAS, random search and evolution (NSGA-II on real evaluations)
   need to reach 99% of the true front's hypervolume (val_acc:max, macs:min), driving the real ``SearchLoop`` with
   the cached table as evaluator.
4. Predictor Kendall tau on held-out subnets (fit on a random sample, predict all the others); ``--only vit-tau``
   the same on a second space, a tiny timm ViT (216 subnets), so the predictors are not fitted to one table.
5. Search overhead (everything but real evaluations) as a fraction of wall time of a real 200-evaluation run.
6. Storage that scales (``--only storage``): a 1,000-evaluation study on SQLite with near-free evaluations (a
   synthetic space, no model); the per-evaluation overhead in ms, and as a fraction of the issue's 0.65 s evaluations.
7. Every rank searches (``--only ranks``): 1 vs 2 processes sharing one SQLite study, each evaluation a fixed amount
   of single-threaded CPU work (a matmul count calibrated to ~0.2 s on one idle core; torch threads 1 per process,
   so 1 rank alone does not use both cores); the evaluations-per-wall-second ratio (target >= 1.7).

LINAS here: 16 initial random evaluations, then rounds of 8 predicted-front candidates; predictors ridge and extra
trees (the defaults) chosen by 5-fold CV each round, NSGA-II with 320 trials on the predictors. The overhead run
(step 5) uses the ``SubnetSearch`` defaults.

Run: ``.venv/bin/python benchmarks/bench_search.py [--seeds 3] [--epochs 4]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_elastic import SearchSpaceConfig, to_supernet  # noqa: E402
from lightning_elastic.search import study as st  # noqa: E402
from lightning_elastic.search.loop import SearchLoop, non_dominated_ranks  # noqa: E402
from lightning_elastic.search.measure import SubnetMeasurer, config_key  # noqa: E402
from lightning_elastic.search.objectives import parse_objectives  # noqa: E402
from lightning_elastic.search.predictors import Predictor, base_columns, features, kendall_tau  # noqa: E402
from lightning_elastic.search.run import SearchSettings, search_supernet  # noqa: E402

OUT = ROOT / "outputs" / "bench_search"
OBJECTIVES = parse_objectives(["val_acc:max", "macs:min"])
#: step 4's regressors: the interaction ridge and the monotone ridge (benchmarks/search.md: more candidates made the
#: 5-fold CV on 32 subnets pick worse; not the LINAS default: the monotone fit is ~3x slower)
TAU_PREDICTORS = ("ridge", "monotone")


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        from timm.models.resnet import BasicBlock, ResNet

        self.backbone = ResNet(BasicBlock, [1, 1, 1, 1], channels=(16, 32, 64, 128), stem_width=16, num_classes=10,
                               in_chans=1)
        self.supernet = None

    def forward(self, x):
        return self.backbone(x)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())


def data(size: int = 16):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n = 1100
    return TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])


def train_supernet(epochs: int) -> tuple[Classifier, DataLoader, DataLoader]:
    torch.manual_seed(0)
    model = Classifier()
    net = to_supernet(model.backbone, SearchSpaceConfig(width=(0.125, 0.25, 0.5, 1.0), depth=None))
    model.supernet = net
    train, val = data()
    tl = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    vl = DataLoader(val, batch_size=256)
    ckpt = OUT / f"supernet-{epochs}ep.pt"
    if ckpt.exists():
        model.load_state_dict(torch.load(ckpt))
        return model, tl, vl
    sandwich(model, net, tl, epochs, lr=3e-3)
    net.select(net.max_config())
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ckpt)
    return model, tl, vl


def sandwich(model, net, tl, epochs: int, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(tl))
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for x, y in tl:
            opt.zero_grad()
            # sandwich rule: max (hard labels), min and 2 random (in-place KD from the max)
            net.select(net.max_config())
            logits = model(x)
            nn.functional.cross_entropy(logits, y).backward()
            soft = logits.detach().softmax(-1)
            for cfg in (net.min_config(), net.sample(gen), net.sample(gen)):
                net.select(cfg)
                nn.functional.kl_div(model(x).log_softmax(-1), soft, reduction="batchmean").backward()
            opt.step()
            sched.step()


class ViTClassifier(Classifier):
    """The second space of the tau check: a tiny timm ViT (embed 32, depth 3, 4 heads, 16 px, patch 4)."""

    def __init__(self) -> None:
        L.LightningModule.__init__(self)
        import timm

        self.backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4,
                                          in_chans=1, num_classes=10, embed_dim=32, depth=3, num_heads=4)
        self.supernet = None


def vit_table(epochs: int = 30) -> tuple[list[dict], object]:
    """Every subnet of the tiny ViT space (2 head counts x 3 MLP widths per block: 216), measured; cached."""
    torch.manual_seed(0)
    model = ViTClassifier()
    net = model.supernet = to_supernet(model.backbone, SearchSpaceConfig(width=(0.25, 0.5, 1.0), heads=(0.5, 1.0),
                                                                         depth=None))
    path = OUT / f"vit-table-{epochs}ep.json"
    if path.exists():
        return json.loads(path.read_text())["rows"], net.space
    train, val = data()
    tl = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    sandwich(model, net, tl, epochs, lr=1e-3)
    measurer = SubnetMeasurer(model, net, DataLoader(val, batch_size=256), tl, ["val_acc", "macs"],
                              bn_calibration_batches=0)
    rows = [{"config": c, **measurer.measure(c), **measurer.costs(c)} for c in net.space.enumerate()]
    path.write_text(json.dumps({"rows": rows}))
    return rows, net.space


def heldout_taus(rows: list[dict], space, seeds: int, names, sizes=(16, 32, 64)) -> dict[int, list[float]]:
    """Fit a CV-selected predictor on a random sample of ``rows``, rank all the others; per sample size and seed."""
    X = lambda rs: [features(space, r["config"], {"params": r["params"], "macs": r["macs"]}) for r in rs]  # noqa: E731
    taus = {}
    for n_fit in sizes:
        taus[n_fit] = []
        for seed in range(seeds):
            idx = np.random.default_rng(seed).permutation(len(rows))
            fit, held = [rows[i] for i in idx[:n_fit]], [rows[i] for i in idx[n_fit:]]
            p = Predictor("val_acc", names, seed=seed, base_columns=base_columns(space))
            p.fit(X(fit), [r["val_acc"] for r in fit])
            taus[n_fit].append(kendall_tau([r["val_acc"] for r in held], p.predict(X(held))))
        print(f"{names}: held-out Kendall tau, fit on {n_fit}: mean {np.mean(taus[n_fit]):.3f} "
              f"{np.round(taus[n_fit], 3).tolist()}", flush=True)
    return taus


def exhaustive_table(model, tl, vl, epochs: int) -> tuple[list[dict], float]:
    path = OUT / f"table-{epochs}ep.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return saved["rows"], saved["seconds_per_eval"]
    net = model.supernet
    measurer = SubnetMeasurer(model, net, vl, tl, ["val_acc", "macs"], bn_calibration_batches=4)
    rows, start = [], time.perf_counter()
    for cfg in net.space.enumerate():
        rows.append({"config": cfg, **measurer.measure(cfg)})
    per_eval = (time.perf_counter() - start) / len(rows)
    path.write_text(json.dumps({"rows": rows, "seconds_per_eval": per_eval}))
    return rows, per_eval


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """2-D hypervolume of minimisation points w.r.t. ``ref``."""
    pts = points[(points < ref).all(axis=1)]
    if not len(pts):
        return 0.0
    front = pts[non_dominated_ranks(pts) == 0]
    front = front[np.argsort(front[:, 0])]
    hv, prev_y = 0.0, ref[1]
    for x, y in front:
        if y < prev_y:
            hv += (ref[0] - x) * (prev_y - y)
            prev_y = y
    return hv


def min_form(rows, lo, hi) -> np.ndarray:
    pts = np.array([[-r["val_acc"], r["macs"]] for r in rows])
    return (pts - lo) / (hi - lo)


def evals_to_target(order: list[dict], lo, hi, ref, true_hv: float, frac: float = 0.99) -> int | None:
    for n in range(1, len(order) + 1):
        if hypervolume(min_form(order[:n], lo, hi), ref) >= frac * true_hv:
            return n
    return None


def run_strategy(rows, space, strategy: str, seed: int, budget: int) -> tuple[list[dict], SearchLoop]:
    table = {config_key(r["config"]): r for r in rows}
    sampler = st.make_sampler("nsga2", seed, 16) if strategy == "evolution" else optuna.samplers.RandomSampler(seed)
    study = optuna.create_study(directions=[o.optuna_direction for o in OBJECTIVES], sampler=sampler)
    loop = SearchLoop(space, OBJECTIVES, {}, lambda c: {k: table[config_key(c)][k] for k in ("val_acc", "macs")},
                      lambda c: {"params": 0.0, "macs": table[config_key(c)]["macs"]}, study, strategy=strategy,
                      num_evals=budget, rounds=max(1, (budget - 16) // 8), initial=16, seed=seed,
                      predictors=SearchSettings().predictors, predictor_trials=320,
                      population_size=16 if strategy == "evolution" else 32, progress=False)
    loop.run()
    done = sorted(st.real_trials(study), key=lambda t: t.number)
    return [table[t.user_attrs["config_key"]] for t in done], loop


# -- 6 and 7: storage and ranks, on a synthetic 4,096-subnet space (no model) --------------------------------------
SYNTH_OBJECTIVES = parse_objectives(("val_acc:max", "macs:min"))


def _synthetic_space():
    from lightning_elastic.core.dims import ElasticDim
    from lightning_elastic.core.space import SearchSpace

    return SearchSpace([ElasticDim(f"block{i}.width", [1, 2, 3, 4], 4, kind="width") for i in range(6)])


def _synthetic_costs(cfg) -> dict[str, float]:
    return {"params": float(sum(cfg.values())), "macs": sum((6 - i) * v * 1e3 for i, v in enumerate(cfg.values()))}


def _synthetic_evaluate(cfg, work_iters: int = 0) -> dict[str, float]:
    # a fixed amount of single-threaded CPU work, not a sleep nor a fixed time: two ranks squeezed onto one core
    # must take twice as long, or the 2-vs-1 ratio would show parallelism the machine does not have
    x = torch.ones(64, 64)
    for _ in range(work_iters):
        x = (x @ x).clamp_(max=1.0)
    acc = sum((i + 1) * np.log1p(v) for i, v in enumerate(cfg.values())) / 20.0
    return {"val_acc": float(acc), **_synthetic_costs(cfg)}


def storage_overhead(num_evals: int, folder: Path, strategy: str = "random", eval_s: float = 0.65) -> dict:
    """Wall time per evaluation of a search whose evaluations cost nothing: all of it is the search's overhead
    (claims, trial writes, proposals). Reported per evaluation and as a fraction of ``eval_s`` evaluations."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / f"storage-{strategy}.db"
    db.unlink(missing_ok=True)
    space = _synthetic_space()
    study = st.open_study(f"sqlite:///{db}", "s", space, SYNTH_OBJECTIVES)
    loop = SearchLoop(space, SYNTH_OBJECTIVES, {}, _synthetic_evaluate, _synthetic_costs, study, strategy=strategy,
                      num_evals=num_evals, progress=False)
    t0 = time.perf_counter()
    loop.run()
    wall = time.perf_counter() - t0
    per_eval = (wall - loop.timings["evaluate_s"]) / num_evals
    return {"strategy": strategy, "num_evals": num_evals, "wall_s": wall, "overhead_ms_per_eval": 1e3 * per_eval,
            f"overhead_fraction_at_{eval_s}s_evals": per_eval / (per_eval + eval_s), "timings": loop.timings}


def _work_iters(work_s: float) -> int:
    """Matmul iterations that take ``work_s`` seconds on one thread here (measured once, before the ranks start)."""
    torch.set_num_threads(1)
    x, n, start = torch.ones(64, 64), 0, time.perf_counter()
    while time.perf_counter() - start < 0.5:
        x = (x @ x).clamp_(max=1.0)
        n += 1
    return max(1, round(n / (time.perf_counter() - start) * work_s))


def _rank_worker(rank: int, world_size: int, storage: str, num_evals: int, work_iters: int, out: str) -> None:
    torch.set_num_threads(1)  # one core per rank: 1 rank alone must not already use both
    space = _synthetic_space()
    study = st.open_study(storage, "s", space, SYNTH_OBJECTIVES)
    loop = SearchLoop(space, SYNTH_OBJECTIVES, {}, lambda c: _synthetic_evaluate(c, work_iters), _synthetic_costs, study,
                      strategy="random", num_evals=num_evals, progress=False, rank=rank, world_size=world_size)
    # a file barrier: the clock starts when every rank is ready (process start-up is not search time)
    Path(f"{out}.ready.{rank}").touch()
    while not all(Path(f"{out}.ready.{r}").exists() for r in range(world_size)):
        time.sleep(0.01)
    start = time.time()
    loop.run()
    Path(f"{out}.{rank}").write_text(json.dumps({"evaluated": loop.num_evaluated, "start": start, "end": time.time()}))


def ranks_ratio(num_evals: int, folder: Path, work_s: float = 0.2) -> dict:
    """Evaluations per wall-second with 2 ranks sharing one SQLite study vs 1 rank (same total evaluations, each
    evaluation the same fixed amount of single-threaded work, ~``work_s`` seconds on an idle core)."""
    import torch.multiprocessing as mp

    folder.mkdir(parents=True, exist_ok=True)
    work_iters = _work_iters(work_s)
    rates = {}
    for world_size in (1, 2):
        db = folder / f"ranks-{world_size}.db"
        db.unlink(missing_ok=True)
        st.open_study(f"sqlite:///{db}", "s", _synthetic_space(), SYNTH_OBJECTIVES)  # created before the ranks start
        out = folder / f"world{world_size}"
        for f in folder.glob(f"{out.name}.*"):
            f.unlink()
        mp.spawn(_rank_worker, args=(world_size, f"sqlite:///{db}", num_evals, work_iters, str(out)), nprocs=world_size)
        found = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world_size)]
        wall = max(f["end"] for f in found) - min(f["start"] for f in found)
        rates[world_size] = num_evals / wall
        print(f"{world_size} rank(s): {rates[world_size]:.2f} evaluations/s, per rank "
              f"{[f['evaluated'] for f in found]}", flush=True)
    return {"num_evals": num_evals, "work_s": work_s, "work_iters": work_iters, "evals_per_s": rates,
            "ratio_2_vs_1": rates[2] / rates[1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("all", "storage", "ranks", "vit-tau"), default="all",
                        help="storage / ranks: only step 6 / 7 (no training); vit-tau: step 4 on a tiny ViT space")
    parser.add_argument("--storage-evals", type=int, default=1000)
    parser.add_argument("--rank-evals", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    # 4 epochs: trained enough for a ~0.8-0.9 accuracy range across the space; after 10 epochs every subnet is within
    # 2 points (0.963-0.984) and the differences are mostly validation-set noise (1 image = 0.0014)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--evolution-budget", type=int, default=160)
    parser.add_argument("--linas-budget", type=int, default=80)
    parser.add_argument("--overhead-evals", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.only in ("all", "storage"):
        found = storage_overhead(args.storage_evals, OUT / "storage")
        print(json.dumps(found, indent=1), flush=True)
        (OUT / "storage.json").write_text(json.dumps(found, indent=1))
    if args.only in ("all", "ranks"):
        found = ranks_ratio(args.rank_evals, OUT / "ranks")
        print(json.dumps(found, indent=1), flush=True)
        (OUT / "ranks.json").write_text(json.dumps(found, indent=1))
    if args.only == "vit-tau":
        rows, space = vit_table()
        for names in (SearchSettings().predictors, TAU_PREDICTORS):
            heldout_taus(rows, space, args.seeds, names)
    if args.only != "all":
        return
    t0 = time.perf_counter()
    model, tl, vl = train_supernet(args.epochs)
    train_s = time.perf_counter() - t0
    rows, per_eval = exhaustive_table(model, tl, vl, args.epochs)
    space = model.supernet.space
    accs = np.array([r["val_acc"] for r in rows])
    print(f"space: {space.num_subnets} subnets; train {train_s:.0f}s; {per_eval:.3f}s per real evaluation; "
          f"val_acc {accs.min():.3f}..{accs.max():.3f}")

    pts = np.array([[-r["val_acc"], r["macs"]] for r in rows])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    ref = np.array([1.0, 1.0])  # the table's nadir after normalisation
    true_hv = hypervolume(min_form(rows, lo, hi), ref)
    results = {"num_subnets": space.num_subnets, "seconds_per_eval": per_eval, "true_front_size":
               int((non_dominated_ranks(pts) == 0).sum()), "seeds": []}
    for seed in range(args.seeds):
        linas_order, loop = run_strategy(rows, space, "linas", seed, args.linas_budget)
        random_order, _ = run_strategy(rows, space, "random", seed, len(rows))
        evolution_order, _ = run_strategy(rows, space, "evolution", seed, args.evolution_budget)
        n_linas = evals_to_target(linas_order, lo, hi, ref, true_hv)
        n_random = evals_to_target(random_order, lo, hi, ref, true_hv)
        entry = {"seed": seed, "linas": n_linas, "random": n_random,
                 "evolution": evals_to_target(evolution_order, lo, hi, ref, true_hv),
                 "linas_hv_at_budget": hypervolume(min_form(linas_order, lo, hi), ref) / true_hv,
                 "linas_final_tau": loop.quality["val_acc"].kendall_tau if loop.quality else None}
        results["seeds"].append(entry)
        print(entry, flush=True)

    # predictor quality on held-out subnets: fit on a random sample, rank all the others
    heldout_taus(rows, space, args.seeds, SearchSettings().predictors)
    results["heldout_tau"] = {str(k): v for k, v in heldout_taus(rows, space, args.seeds, TAU_PREDICTORS).items()}

    # overhead of a real search (real measurements through the validation loop)
    out = OUT / "overhead"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    settings = SearchSettings(objectives=("val_acc:max", "macs:min"), num_evals=min(args.overhead_evals, len(rows)),
                              output_dir=out, rounds=10, bn_calibration_batches=4, progress=False, export_top=3)
    result = search_supernet(model, model.supernet, vl, tl, settings)
    s = result.summary
    wall = s["wall_s"]
    real = s["timings"]["evaluate_s"]
    results["overhead"] = {"num_evals": len(result.evaluations), "wall_s": wall, "evaluate_s": real,
                           "overhead_fraction": (wall - real) / wall, "timings": s["timings"],
                           "measure_timings": s["measure_timings"], "predictors": s["predictors"]}
    print(json.dumps(results["overhead"], indent=1))

    lin = [e["linas"] for e in results["seeds"]]
    ran = [e["random"] for e in results["seeds"]]
    if all(v is not None for v in lin + ran):
        results["median_linas"], results["median_random"] = float(np.median(lin)), float(np.median(ran))
        results["ratio_of_medians"] = results["median_random"] / results["median_linas"]
        results["ratios"] = [r / max(1, v) for r, v in zip(ran, lin)]
    evo = [e["evolution"] for e in results["seeds"]]
    results["median_evolution"] = float(np.median(evo)) if all(v is not None for v in evo) else None
    print(json.dumps({k: v for k, v in results.items() if k != "overhead"}, indent=1))
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
