"""`freshrec tune`: Bayesian search (Optuna's TPE) over the two towers' hyperparameters on the
validation split, bounded by a number of trials and a time budget. Writes the best model config,
which `freshrec build --config` and `freshrec eval --config` read, and every trial beside it."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from freshrec.config import ModelConfig
from freshrec.progress import log


@dataclass(frozen=True)
class TuneOptions:
    out: Path = Path("build/tuned_config.json")  # the best config; trials go to <out stem>.trials.json
    trials: int = 20
    timeout_s: float = 1800.0  # no new trial starts after this
    seed: int = 0
    tiny: bool = False
    max_users: int | None = None


def suggest(trial, base: ModelConfig) -> ModelConfig:
    """The search space: what moved validation NDCG@10 by hand on ML-100K, in ranges around it."""
    dim = trial.suggest_categorical("dim", [32, 64, 128]) if not base.item.dim < 32 else base.item.dim
    item = dataclasses.replace(
        base.item, dim=dim,
        id_dropout=trial.suggest_float("id_dropout", 0.0, 0.8),
        dropout=trial.suggest_float("item_dropout", 0.0, 0.3),
    )  # fmt: skip
    user = dataclasses.replace(
        base.user, dim=dim,
        layers=trial.suggest_int("layers", 1, 3),
        dropout=trial.suggest_float("user_dropout", 0.0, 0.5),
    )  # fmt: skip
    train = dataclasses.replace(
        base.train,
        lr=trial.suggest_float("lr", 2e-4, 5e-3, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        temperature=trial.suggest_float("temperature", 0.02, 0.2, log=True),
    )  # fmt: skip
    reranker = dataclasses.replace(base.reranker, dim=dim, retrieval_temperature=train.temperature)
    return dataclasses.replace(base, item=item, user=user, train=train, reranker=reranker)


def tune(opts: TuneOptions) -> dict:
    import optuna

    from freshrec.training.build import fit, prepare, subsample
    from freshrec.training.data import load_movielens_100k

    base = ModelConfig.tiny() if opts.tiny else ModelConfig()
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=opts.seed))
    ds = load_movielens_100k()
    if opts.max_users:
        ds = subsample(ds, opts.max_users)
    p = prepare(ds, base)
    t_start = time.time()

    def objective(trial) -> float:
        cfg = suggest(trial, p.cfg)
        t = time.time()
        _, logs = fit(p, cfg, rerank=False)
        score = logs["towers"]["best_valid_ndcg10"]
        trial.set_user_attr("seconds", round(time.time() - t, 1))
        log(f"tune trial {trial.number + 1}/{opts.trials}: valid NDCG@10 {score:.4f} ({time.time() - t:.0f}s) {trial.params}")
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=opts.seed))
    if not opts.tiny:  # the shipped defaults first, so the search can only improve on them
        study.enqueue_trial({
            "dim": base.item.dim, "id_dropout": base.item.id_dropout, "item_dropout": base.item.dropout, "layers": base.user.layers,
            "user_dropout": base.user.dropout, "lr": base.train.lr, "weight_decay": base.train.weight_decay, "temperature": base.train.temperature,
        })  # fmt: skip
    study.optimize(objective, n_trials=opts.trials, timeout=opts.timeout_s)
    best = suggest(optuna.trial.FixedTrial(study.best_params), base)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    best.save(out)
    trials = [{"number": t.number, "params": t.params, "valid_ndcg10": t.value, "seconds": t.user_attrs.get("seconds")}
              for t in study.trials if t.value is not None]  # fmt: skip
    result = {"best_valid_ndcg10": study.best_value, "best_params": study.best_params, "trials": trials,
              "seconds": round(time.time() - t_start, 1), "config": str(out)}  # fmt: skip
    out.with_suffix(".trials.json").write_text(json.dumps(result, indent=2))
    log(f"tune: best valid NDCG@10 {study.best_value:.4f} after {len(trials)} trials -> {out}")
    return result
