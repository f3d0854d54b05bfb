"""
Run folders (runs/train/exp, exp2, ...), claimed atomically; resuming a run from its last.pt, and torchrun's
restarts of a worker group; how a stopped run ends.
"""
import argparse
import contextlib
import itertools
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from support.checkpoints import read_run_checkpoint
from support.cli import select_device


def join_process_group(device):
    """This process into torchrun's group: NCCL on GPUs, gloo on CPUs. The others wait up to 3 hours, as the original's,
    while rank 0 downloads, validates or saves; a restarted group reads none of the keys of the group before it."""
    timeout = timedelta(hours=3)
    store, rank, world = next(dist.rendezvous('env://', timeout=timeout))
    store = dist.PrefixStore(f'restart{os.getenv("TORCHELASTIC_RESTART_COUNT", 0)}', store)
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def start_process(device_name, ddp):
    """This process's device (under torchrun its GPU of --device), and under torchrun (ddp) its process group joined:
    one process per GPU (NCCL), or per CPU share (gloo)."""
    device = select_device(device_name)
    if device.type == 'cuda':  # else pinned memory makes a context on GPU 0 too
        torch.cuda.set_device(device)
    if ddp:
        join_process_group(device)
    return device


def from_rank0(obj, ddp):
    """Rank 0's obj on every process: under DDP all take one path."""
    box = [obj]
    if ddp:
        dist.broadcast_object_list(box, 0)
    return box[0]


def local_rank0_first(function, *args):
    """function(*args), run by each machine's local rank 0 before its other processes: one download."""
    local_rank = int(os.getenv('LOCAL_RANK', -1))
    if local_rank > 0:
        dist.barrier()
    result = function(*args)
    if local_rank == 0:
        dist.barrier()
    return result


def ddp_wrapped(model, device, sync_bn=False):
    """model in DDP's wrapper, which syncs the gradients. static_graph: every step uses the same parameters (a step
    skipped is skipped by all processes). sync_bn (GPUs only): the BatchNorms' statistics too."""
    if sync_bn and device.type == 'cuda':  # in place: model stays the object the EMA follows
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if int(os.getenv('RANK', -1)) in (-1, 0):
            print('Using SyncBatchNorm', flush=True)
    gpus = [device] if device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(model, gpus, static_graph=True)


class FiniteSteps:
    """finite(loss, paths): whether a training step goes on. A non-finite loss on any process skips the step on all
    (under DDP all-reduce would hang), naming its batch's files; 3 in a row raise FloatingPointError."""
    def __init__(self, ddp):
        self.ddp = ddp
        self.in_a_row = 0

    def __call__(self, loss, paths):
        bad = (~loss.detach().isfinite()).float()
        if bad:  # this process's batch (before the others' verdicts are added)
            print(f'WARNING: loss {loss.item()}, step skipped; the batch: {" ".join(paths)}', file=sys.stderr)
        if self.ddp:
            dist.all_reduce(bad)
        self.in_a_row = self.in_a_row + 1 if bad else 0
        if self.in_a_row >= 3:
            raise FloatingPointError(f'{self.in_a_row} steps in a row with a non-finite loss')
        return not bad


def require_finite(*models):
    """A FloatingPointError if a weight of the models is no longer finite: last.pt stays the last good one."""
    for model in models:
        if not all(value.isfinite().all() for value in model.state_dict().values()):
            raise FloatingPointError('the weights are no longer finite')


CLAIMED = set()  # the run folders this process claimed: the only ones it may remove


def run_dir(project, name, exist_ok=False):
    """The folder of a new run, claimed (made) and returned: project/name, or if that exists (and not exist_ok) name2,
    name3, ... A mkdir that fails if the folder exists is the claim: two runs started at the same instant never share
    one. A folder that cannot be made ends the program with a message."""
    for n in itertools.count(1):
        path = Path(project) / (f'{name}{n}' if n > 1 else name)
        try:
            path.mkdir(parents=True, exist_ok=exist_ok)
            if not exist_ok:
                CLAIMED.add(path.resolve())
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise SystemExit(f'ERROR: cannot write the run folder {path} ({e.strerror})') from None



@contextlib.contextmanager
def removed_if_unstarted(save_dir, fresh):
    """Around the setup of a run: if it fails (or Ctrl-C), a fresh run folder goes again with what pick_run put in it,
    unless something else is in it by then. Ctrl-C ends with a message, not a traceback."""
    try:
        yield
    except BaseException as e:
        if fresh and save_dir.resolve() in CLAIMED:  # only a folder this process claimed: never another run's
            shutil.rmtree(save_dir, ignore_errors=True)  # with what the start wrote (labels.jpg)
        if isinstance(e, KeyboardInterrupt):
            print('\nInterrupted before training started', file=sys.stderr)
            raise SystemExit(130) from None
        raise


def saved_epoch(path):
    """The epoch a last.pt holds, read from the file itself (its tensors mapped, not read); None if none."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=True)['epoch']
    except Exception:  # no file, or not one that a run wrote
        return None


def stop_run(e, last, epochs):
    """How a training run of epochs ends on Ctrl-C (exit 130) or an error that stops it (FloatingPointError): saying
    what last.pt holds, as it is on disk. Running out of GPU memory goes on to train.main's message."""
    saved = saved_epoch(last)
    held = f'{last} holds epoch {saved}' if saved is not None else 'no epoch completed'
    if isinstance(e, KeyboardInterrupt):
        then = ', nothing to resume' if saved is None else '; continue with --resume'
        if saved is not None and saved + 1 >= epochs:
            then = ', the final one; --resume finishes the run (its final validation)'
        print(f'\nInterrupted: {held}{then}')
        raise SystemExit(130)
    if isinstance(e, torch.OutOfMemoryError):
        raise e
    raise SystemExit(f'ERROR: {e}: training stopped, {held}. Look for bad labels, or lower lr0 / use --no-amp')


def run_under_torchrun(script, argv, n):
    """This process becomes torchrun running the same command in n processes, on a free port (--standalone)."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n), script]
    print(f'{n} GPUs, one process each (DDP): {" ".join(cmd + argv)}', flush=True)
    os.execv(sys.executable, cmd + argv)


def pick_run(opt, parse_args):
    """(options, checkpoint to resume or None, run folder). --resume continues a run; so does a restart by torchrun
    (TORCHELASTIC_RESTART_COUNT > 0): the run this torchrun job began, marked with its run id, from its last.pt,
    or from the beginning if it saved none yet. Else a new run folder, refused now if it cannot be written.
    parse_args(argv) gives the options of today's command line: a checkpoint's own options override them."""
    run_id, restarted = os.getenv('TORCHELASTIC_RUN_ID'), int(os.getenv('TORCHELASTIC_RESTART_COUNT', 0))
    markers = sorted(Path(opt.project).glob('*/.torchrun_id'), key=os.path.getmtime)  # a reused id: the newest run
    mine = [m.parent for m in markers if restarted and m.read_text() == run_id][-1:]
    if mine and (mine[0] / 'weights/last.pt').exists():
        opt.resume = str(mine[0] / 'weights/last.pt')
    if opt.resume:  # everything, options included, comes from the checkpoint: --resume PATH, or the latest last.pt
        runs = [opt.resume] if isinstance(opt.resume, str) else sorted(Path(opt.project).glob('**/last.pt'),
                                                                           key=os.path.getmtime)
        if not runs:
            raise SystemExit(f'--resume: no last.pt under {opt.project}; give its path: --resume path/to/last.pt')
        last = Path(runs[-1])
        ckpt = read_run_checkpoint(last)
        keep = dict(device=opt.device, workers=opt.workers, resume=str(last))  # from this command line
        if opt.data_given:  # the dataset moved since
            keep['data'] = opt.data
        if opt.names:
            keep['names'] = opt.names
        opt = argparse.Namespace(**{**vars(parse_args(['--batch', str(ckpt['opt'].get('batch', 16))])), **ckpt['opt'],
                                    **keep})
        if 'optimizer' not in ckpt:  # a finished run is stripped of its optimizer
            done = f'finished all {opt.epochs} epochs' if ckpt['epoch'] + 1 >= opt.epochs else 'stopped early'
            raise SystemExit(f'{last} {done}: nothing to resume (fine-tune it with --weights)')
        if ckpt['epoch'] + 1 >= opt.epochs:  # stopped after its final epoch, before its end
            print(f'Finishing {last}: all {opt.epochs} epochs are done, not the final validation')
        else:
            print(f'Resuming {last} from epoch {ckpt["epoch"] + 1}')
        return opt, ckpt, last.parent.parent
    save_dir = mine[0] if mine else run_dir(opt.project, opt.name, opt.exist_ok)
    try:
        (save_dir / 'weights').mkdir(parents=True, exist_ok=True)
        (save_dir / '.torchrun_id').write_text(run_id or '')
    except OSError as e:
        raise SystemExit(f'ERROR: cannot write the run folder {save_dir} ({e.strerror})') from None
    return opt, None, save_dir
