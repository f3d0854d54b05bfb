"""
--evolve N: the original's search for hyperparameters. Each generation takes one of the best runs so far (weighted by
fitness), mutates its hyperparameters within the original's ranges, and trains a normal run with them; evolve.csv
gets a row a generation (metrics, then the hyperparameters) and hyp_evolve.yaml the best so far. It drives training
from outside: train.py hands it the function that trains one run. --resume_evolve evolve.csv goes on where it stopped;
--evolve_population DIR trains its hyp files as they are first.
"""
import argparse
import math
from pathlib import Path

import numpy as np

from support.data_yaml import read_yaml
from support.files import save_text
from support.results import read_results
from support.runs import run_dir

# The original's (mutation scale 0-1, lower limit, upper limit) of each hyperparameter it evolves
META = dict(lr0=(1, 1e-5, 1e-1), lrf=(1, 0.01, 1.0), momentum=(0.3, 0.6, 0.98), weight_decay=(1, 0.0, 0.001),
            warmup_epochs=(1, 0.0, 5.0), warmup_momentum=(1, 0.0, 0.95), warmup_bias_lr=(1, 0.0, 0.2),
            box=(1, 0.02, 0.2), cls=(1, 0.2, 4.0), cls_pw=(1, 0.5, 2.0), obj=(1, 0.2, 4.0), obj_pw=(1, 0.5, 2.0),
            anchor_t=(1, 2.0, 8.0), fl_gamma=(0, 0.0, 2.0), hsv_h=(1, 0.0, 0.1), hsv_s=(1, 0.0, 0.9),
            hsv_v=(1, 0.0, 0.9), degrees=(1, 0.0, 45.0), translate=(1, 0.0, 0.9), scale=(1, 0.0, 0.9),
            shear=(1, 0.0, 10.0), perspective=(0, 0.0, 0.001), flipud=(1, 0.0, 1.0), fliplr=(0, 0.0, 1.0),
            mosaic=(1, 0.0, 1.0), mixup=(1, 0.0, 1.0))
METRICS = ['metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss',
           'val/obj_loss', 'val/cls_loss']  # evolve.csv's first columns, as the original's


def mutated(parent, keys, rng, probability=0.8, sigma=0.2):
    """parent's hyperparameters (keys) each scaled by a random factor in [0.3, 3], the original's: a value changes
    with probability, by a normal step of sigma times its META scale; at least one changes."""
    gains = np.array([META.get(k, (0,))[0] for k in keys], float)
    change = np.ones(len(keys))
    while (change == 1).all():  # until something changes: no generation repeats its parent
        mutate = rng.random(len(keys)) < probability
        step = gains * rng.standard_normal(len(keys)) * rng.random() * sigma
        change = np.where(mutate, step + 1, 1.0).clip(0.3, 3.0)
    return dict(zip(keys, parent * change))


def limited(hyp):
    """hyp within META's limits, to 5 significant digits, as the original's."""
    for k, (_, low, high) in META.items():
        if k in hyp:
            hyp[k] = float(f'{min(max(hyp[k], low), high):.5g}')
    return hyp


def evolve(opt, hyp, train_once, fitness):
    """Runs opt.evolve generations; train_once(opt) trains one run and returns its folder (with results.csv).
    hyp: the starting hyperparameters (HYP with --hyp's changes); fitness(metrics by name): a run's score, best.pt's
    (the original's: 0.1 mAP50 + 0.9 mAP50-95)."""

    def scores(rows):  # of evolve.csv's rows
        return np.array([fitness(dict(zip(METRICS, row))) for row in rows])
    keys = list(hyp)
    files = sorted(Path(opt.evolve_population).glob('*.y*ml')) if opt.evolve_population else []
    population = [_read_hyp(path, hyp) for path in files]  # read first: a bad file ends nothing begun
    if opt.resume_evolve:  # its rows checked before anything runs
        csv = Path(opt.resume_evolve)
        folder = csv.parent
        _rows(csv, keys)
    else:
        folder = run_dir(opt.project, opt.name, opt.exist_ok)
        csv = folder / 'evolve.csv'
    done = len(_rows(csv, keys))
    if done:
        print(f'Evolving on from {csv}: {done} generations done')
    for generation in range(done, opt.evolve):
        rows = _rows(csv, keys)
        rng = np.random.default_rng([opt.seed, generation])  # a resumed evolution draws as an unbroken one
        if generation < len(population):  # a starting hyp file, as it is
            values = dict(hyp, **population[generation])
        elif len(rows):
            best = rows[np.argsort(-scores(rows))][:5]  # the top 5, one drawn by fitness
            weights = scores(best) - scores(best).min() + 1e-6
            parent = best[rng.choice(len(best), p=weights / weights.sum()), len(METRICS):]
            values = mutated(parent, keys, rng)
        else:
            values = dict(hyp)
        values = {k: float(v) for k, v in limited(values).items()}  # plain numbers, for the checkpoints
        run_opt = argparse.Namespace(**vars(opt))
        run_opt.__dict__.update(hyp=list(values.items()), evolve=None, noval=True, nosave=True, noplots=True,
                                project=str(folder), name=f'generation{generation}', exist_ok=False, resume=None)
        print(f'\nEvolve: generation {generation + 1}/{opt.evolve}')
        run = train_once(run_opt)
        head, results = read_results(Path(run) / 'results.csv')
        metrics = [dict(zip(head, results[-1])).get(k, math.nan) for k in METRICS] if results else [0.0] * 7
        _write(csv, keys, [*rows.tolist(), metrics + [values[k] for k in keys]])
    rows = _rows(csv, keys)
    best = rows[np.argmax(scores(rows))]
    best_score = scores(best[None])[0]
    text = ''.join(f'{k}: {v:.5g}\n' for k, v in zip(keys, best[len(METRICS):]))
    save_text(f'# the best of {len(rows)} generations in {csv}: fitness {best_score:.5g}\n' + text,
              folder / 'hyp_evolve.yaml')
    print(f'Evolve: {len(rows)} generations; the best, fitness {best_score:.5g}, in '
          f'{folder / "hyp_evolve.yaml"} (train with --hyp {folder / "hyp_evolve.yaml"})')
    return folder


def _read_hyp(path, keys):
    """A hyp file's values of keys (others are ignored); a message naming the file if they are not numbers."""
    try:
        values = {k: float(v) for k, v in read_yaml(path).items() if k in keys}
    except (OSError, ValueError, TypeError) as e:
        raise SystemExit(f'ERROR: {path}: not a hyp file of numbers ({e})') from None
    for k, v in values.items():
        if not math.isfinite(v):
            raise SystemExit(f'ERROR: {path}: {k}: {v} is not a finite number')
    return values


def _rows(csv, keys):
    """evolve.csv's rows as numbers (generations, metrics + keys); none if there is no file yet."""
    if not csv.is_file():
        return np.zeros((0, len(METRICS) + len(keys)))
    lines = csv.read_text(errors='replace').splitlines()
    head = [h.strip() for h in lines[0].split(',')] if lines else []
    if head != METRICS + keys:
        raise SystemExit(f'ERROR: {csv}: its columns are not this HYP\'s: it comes from another evolution')
    try:
        rows = [[float(v) for v in line.split(',')] for line in lines[1:] if line.strip()]
        return np.array(rows, float).reshape(-1, len(head))
    except ValueError:
        raise SystemExit(f'ERROR: {csv}: a row is not {len(head)} numbers: not an evolve.csv') from None


def _write(csv, keys, rows):
    text = ','.join(f'{k:>20}' for k in METRICS + keys) + '\n'
    text += ''.join(','.join(f'{v:>20.5g}' for v in row) + '\n' for row in rows)
    save_text(text, csv)  # a crash leaves the last generation's file
