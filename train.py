"""
Train or validate YOLOv5, the entry point beside detect.py:
  python train.py --data coco128.yaml --weights yolov5n.pt --img 640 --epochs 100
  torchrun --nproc_per_node 2 train.py --data ... --device 0,1          (DDP: NCCL on GPUs, gloo on CPU)
  python train.py --val-only --weights yolov5n.pt --data coco128.yaml --batch 32 [--save-json --task test]
Owns the training hyperparameters, the training loop (warmup, LR schedule, gradient accumulation, mixed precision,
EMA, checkpoints, resume, early stopping) and validation with YOLOv5's metrics (P, R, mAP, confusion matrix).
Runs go to runs/train/exp, exp2, ...: weights/last.pt and best.pt, results.csv and pictures.
"""
import argparse
import math
import os
import sys
import time
from copy import deepcopy
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from data import AUG, YOLODataset, create_dataloader, letterbox, set_epoch, to_tensor
from export import load_any
from loss import YOLOLoss
from model import SCALES, YOLOv5, non_max_suppression, predict, scale_boxes
from plumbing import (AMP_TYPES, amp_choice, box_iou, check_anchors, check_img_size, checkpoint_file, clock,
                      coco_records, confusion_add, data_spec, device_name, existing_file, half_dtype, is_coco,
                      key_number, label_path, number, or_exit, pick_run, plot_batch, plot_curve, plot_labels,
                      plot_results, print_progress, read_checkpoint, read_names, removed_if_unstarted, run_dir,
                      run_under_torchrun, save_atomic, save_coco_json, save_confusion_matrix, select_device, stop_run,
                      strip_checkpoint, to_cpu, trim_results, weights_file, write_results, xywh2xyxy)

# YOLOv5's hyp.scratch-low.yaml: optimizer, schedule and loss here, the augmentations from data.py.
# Override any of them from the command line: --hyp lr0=0.02 mosaic=0.5, or an original hyp file: --hyp hyp.VOC.yaml
HYP = dict(lr0=0.01, lrf=0.01, momentum=0.937, weight_decay=0.0005,   # SGD; final lr = lr0 * lrf
           warmup_epochs=3.0, warmup_momentum=0.8, warmup_bias_lr=0.1,
           nbs=64,                                                    # nominal batch: gradients accumulate to it
           box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0,        # loss gains and BCE positive weights
           anchor_t=4.0, fl_gamma=0.0, label_smoothing=0.0, **AUG)    # anchor-label wh ratio limit, focal loss gamma
# keys of the original's hyp files that are not used here, and why
NOT_USED = dict(iou_t='unused by the original too', anchors='3 anchors per level here, refitted by autoanchor if poor',
                copy_paste='it pastes segments: polygon labels are read as boxes here')
RANK = int(os.getenv('RANK', -1))  # set by torchrun: this process among all; -1 without torchrun
LOCAL_RANK = int(os.getenv('LOCAL_RANK', -1))  # this process on its machine
WORLD_SIZE = int(os.getenv('WORLD_SIZE', 1))
MAIN = RANK in (-1, 0)  # only this process validates, prints and saves
LOSSES = ['box_loss', 'obj_loss', 'cls_loss']
METRICS = ['metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95',
           *(f'val/{k}' for k in LOSSES)]  # what validate() returns, as named in results.csv


def log(*args, **kwargs):
    if MAIN:
        print(*args, **kwargs, flush=True)


# ---------------------------------------------------------------------------------------------- training
class Trainer:
    """One training run. __init__ sets it up (or restores it from last.pt with --resume); fit() runs the epochs:
    train_epoch() then end_epoch() (validate, results.csv, checkpoints, early stopping), and finish()."""

    def __init__(self, opt):
        self.start_processes(opt)  # DDP first: the steps below broadcast, wait on each other
        opt, resumed, self.save_dir = self.from_rank0(pick_run(opt, parse_args) if MAIN else None)
        with removed_if_unstarted(self.save_dir, MAIN and not resumed):  # a failed start leaves no run folder
            self.setup(opt, resumed)

    def setup(self, opt, resumed):
        # The order matters: each step needs the ones before it.
        self.opt = opt
        self.weights_dir = self.save_dir / 'weights'
        self.start_epoch = resumed['epoch'] + 1 if resumed else 0
        if MAIN:  # rows of epochs that run again: a crash came between a row and its checkpoint
            trim_results(self.save_dir / 'results.csv', self.start_epoch)
        torch.manual_seed(opt.seed + max(RANK, 0))
        # repeatable on GPUs too: deterministic kernels where torch has them; cuBLAS needs a fixed workspace for it
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.hyp = dict(HYP, **dict(opt.hyp))  # the last of a key wins: KEY=VALUE after a file overrides it
        self.hyp['label_smoothing'] = opt.label_smoothing or self.hyp['label_smoothing']
        model = self.setup_model_and_data(resumed)  # the model's classes come from the data
        if MAIN and not resumed:  # before the EMA copies the model, and before DDP sends rank 0's anchors to all
            plot_labels(np.concatenate(self.train_set.labels), self.names, self.save_dir / 'labels.jpg')
            if not opt.noautoanchor:
                check_anchors(self.train_set, model, self.hyp['anchor_t'], opt.img, opt.seed)
        self.setup_optimizer(model, resumed)  # the EMA and the mixed precision check copy the anchors chosen above
        if opt.sync_bn and self.ddp and self.device.type == 'cuda':
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log('Using SyncBatchNorm')
        self.raw = model  # the model itself; self.model is what trains: DDP's wrapper, which syncs the gradients
        self.model = model
        if self.ddp:  # copies rank 0's weights and buffers (anchors too) to all; static_graph: every step uses the
            # same parameters, and a skipped step is skipped on all processes (finite()): all-reduces planned once
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == 'cuda' else None, static_graph=True)
        self.loss_fn = YOLOLoss(model, self.hyp, opt.img)
        self.saved = resumed['epoch'] if resumed else None  # the epoch that last.pt holds
        self.unsaved = None  # with --nosave: the state of the last epoch, written only if the run stops early
        self.bad_steps = 0  # non-finite steps in a row
        self.results = dict.fromkeys(METRICS, 0.0)  # of the latest validation

    def start_processes(self, opt):
        """Under torchrun: one process per GPU (NCCL), or per CPU share (gloo)."""
        self.ddp = LOCAL_RANK != -1
        self.device = select_device(opt.device)  # under torchrun, this process's GPU of --device
        if self.device.type == 'cuda':  # else pinned memory makes a context on GPU 0 too
            torch.cuda.set_device(self.device)
        if not self.ddp:
            return
        timeout = timedelta(hours=3)  # as the original: the others wait while rank 0 downloads, validates or saves
        store, rank, world = next(dist.rendezvous('env://', timeout=timeout))
        store = dist.PrefixStore(f'restart{os.getenv("TORCHELASTIC_RESTART_COUNT", 0)}', store)  # stale keys hang
        backend = 'nccl' if self.device.type == 'cuda' else 'gloo'
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)

    def setup_model_and_data(self, resumed):
        """The model (--freeze applied), the datasets and their loaders; returns the model."""
        opt = self.opt
        if LOCAL_RANK > 0:
            dist.barrier()  # local rank 0 fetches a missing dataset first
        data = or_exit(data_spec, opt.data)
        if LOCAL_RANK == 0:
            dist.barrier()
        # channels-last (as the loader's images are): bf16 training steps ~25% faster on CPU, and fp16 ones on GPUs
        model = build_model(opt, resumed, data['names']).to(self.device, memory_format=torch.channels_last)
        frozen = tuple(f'model.{i}.' for i in (opt.freeze if len(opt.freeze) > 1 else range(opt.freeze[0])))
        for k, p in model.named_parameters():  # --freeze 10: the backbone keeps its starting weights, resumed too
            p.requires_grad_(not k.startswith(frozen))
        self.names = model.names
        self.coco = is_coco(data)
        self.train_set, val_set = build_datasets(opt, data, self.names, self.hyp, model.max_stride)
        cpu = self.device.type == 'cpu'
        batch = opt.batch // WORLD_SIZE
        self.train_loader = create_dataloader(self.train_set, batch, opt.workers, shuffle=not opt.rect,
                                              cpu=cpu, rank=max(RANK, 0), world_size=WORLD_SIZE)
        self.val_loader = create_dataloader(val_set, val_set.batch_size, opt.workers, cpu=cpu) if MAIN else None
        self.nb = len(self.train_loader)  # batches per epoch
        return model

    def setup_optimizer(self, model, resumed):
        """Optimizer, EMA, mixed precision and their state when resuming."""
        opt, hyp = self.opt, self.hyp
        self.warmup_iters = max(round(hyp['warmup_epochs'] * self.nb), 100)  # at least 100: tiny datasets warm up too
        decay = hyp['weight_decay'] * opt.batch * max(round(hyp['nbs'] / opt.batch), 1) / hyp['nbs']
        self.optimizer = make_optimizer(model, opt.optimizer, hyp['lr0'], hyp['momentum'], decay)
        self.ema = deepcopy(model).eval().requires_grad_(False) if MAIN else None  # only rank 0 validates and saves
        self.amp, why = amp_choice(self.device, opt.amp)
        if MAIN and self.amp and not amp_agrees(self.ema, self.train_set.files[0], opt.img, self.amp):
            log(f'AMP: WARNING: {self.amp} outputs disagree with fp32 on {self.train_set.files[0]}, training in fp32')
            self.amp, why = None, 'the check above'
        self.amp, why = self.from_rank0((self.amp, why))  # all processes as rank 0, whose anchors DDP will share
        scaling = ' with loss scaling' if self.amp == torch.float16 else ''  # bf16 has fp32's range: no scaling
        log(f'AMP: mixed precision training in {self.amp}{scaling} ({why})' if self.amp
            else f'AMP: off, training in fp32 ({why})')
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.updates = 0  # optimizer steps, for the EMA's decay
        self.last_opt_step = -1  # the iteration of the last optimizer step, for gradient accumulation
        if resumed:
            if MAIN:
                self.ema.load_state_dict(resumed['ema'])
            self.optimizer.load_state_dict(resumed['optimizer'])
            if self.scaler.is_enabled() and resumed.get('scaler'):
                self.scaler.load_state_dict(resumed['scaler'])
            for k in ('best_fitness', 'best_epoch', 'updates', 'last_opt_step'):
                setattr(self, k, resumed[k])

    def from_rank0(self, obj):
        """Rank 0's obj on every process: under DDP they all take the same path (and need no shared disk)."""
        box = [obj]
        if self.ddp:
            dist.broadcast_object_list(box, 0)
        return box[0]

    def schedule(self, ni):
        """Sets the learning rates and momentum of iteration ni, returns the gradient accumulation: a linear warmup
        (biases from warmup_bias_lr down, the rest from 0 up, momentum from warmup_momentum, accumulation from 1 to
        nbs / batch) towards lf(epoch), then the linear or cosine decay lf."""
        hyp, opt, nw = self.hyp, self.opt, self.warmup_iters
        epoch = ni // self.nb
        # After warmup, epoch e trains at lf(e - 1): the original steps its LambdaLR at the end of each epoch, and
        # warmup overrides the first epochs' rates, so the decay runs one epoch late. Kept: the same LR curve.
        e = epoch if nw >= epoch * self.nb else epoch - 1
        if opt.cos_lr:
            lf = (1 - math.cos(e / opt.epochs * math.pi)) / 2 * (hyp['lrf'] - 1) + 1
        else:
            lf = (1 - e / opt.epochs) * (1.0 - hyp['lrf']) + hyp['lrf']
        ramp = lambda start, end: float(np.interp(min(ni, nw), [0, nw], [start, end]))
        for j, g in enumerate(self.optimizer.param_groups):
            g['lr'] = ramp(hyp['warmup_bias_lr'] if j == 0 else 0.0, hyp['lr0'] * lf)
            if 'momentum' in g:  # SGD (Adam keeps its betas)
                g['momentum'] = ramp(hyp['warmup_momentum'], hyp['momentum'])
        return max(1, round(ramp(1, hyp['nbs'] / opt.batch)))

    def train_epoch(self, epoch):
        """One pass over the training set; returns the mean (box, obj, cls) losses."""
        opt, device = self.opt, self.device
        self.model.train()
        set_epoch(self.train_loader, epoch)
        self.optimizer.zero_grad()
        log(('\n' + '%11s' * 7) % ('Epoch', 'GPU_mem', *LOSSES, 'Instances', 'Size'))
        mloss = torch.zeros(3, device=device)
        t_epoch = time.time()
        for i, (imgs, targets, paths, _) in enumerate(self.train_loader):
            ni = i + self.nb * epoch  # iterations since the start of training
            accumulate = self.schedule(ni)
            imgs = imgs.to(device, non_blocking=True).float() / 255
            if opt.multi_scale:
                imgs = self.rescale(imgs, ni)
            with torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None):
                preds = self.model(imgs)
            loss, items = self.loss_fn(preds, targets.to(device))  # in fp32: Detect returns fp32 maps
            if not self.finite(loss, paths):
                continue
            self.scaler.scale(loss * WORLD_SIZE).backward()  # DDP averages gradients; YOLOv5's loss is per global batch
            if ni - self.last_opt_step >= accumulate:
                self.optimizer_step()
                self.last_opt_step = ni
            mloss = (mloss * i + items) / (i + 1)
            if MAIN:
                stats = (f'{epoch}/{opt.epochs - 1}', device, *mloss, len(targets), imgs.shape[-1])
                print_progress(stats, i, self.nb, t_epoch)
            if MAIN and epoch == 0 and i == 0:
                plot_batch((imgs * 255).byte().cpu(), targets, self.names, self.save_dir / 'train_batch0.jpg')
        return mloss

    def rescale(self, imgs, ni):
        """--multi-scale: the batch resized to a random size in [0.5, 1.5] x --img, a multiple of the stride."""
        rng = np.random.default_rng([self.opt.seed, ni])  # seeded by iteration: a resumed run draws the same
        gs = self.raw.max_stride
        size = int(rng.integers(self.opt.img * 0.5, self.opt.img * 1.5 + gs)) // gs * gs
        f = size / max(imgs.shape[2:])
        if f == 1:
            return imgs
        new_shape = [math.ceil(x * f / gs) * gs for x in imgs.shape[2:]]
        return nn.functional.interpolate(imgs, size=new_shape, mode='bilinear', align_corners=False)

    def finite(self, loss, paths):
        """Whether the step may go on. A non-finite loss on any process skips it on all of them (else the gradient
        all-reduce of DDP would hang), with a warning naming the files; 3 in a row stop the run."""
        bad = (~loss.detach().isfinite()).float()
        if bad:  # this process's batch (before the other processes' verdicts are added)
            print(f'WARNING: loss {loss.item()}, step skipped; the batch: {" ".join(paths)}', file=sys.stderr)
        if self.ddp:
            dist.all_reduce(bad)
        self.bad_steps = self.bad_steps + 1 if bad else 0
        if self.bad_steps >= 3:
            raise FloatingPointError(f'{self.bad_steps} steps in a row with a non-finite loss')
        return not bad

    def optimizer_step(self):
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        self.scaler.step(self.optimizer)  # with fp16, the scaler skips a step whose gradients are not finite
        self.scaler.update()
        self.optimizer.zero_grad()
        self.updates += 1
        if MAIN:
            ema_update(self.ema, self.raw, self.updates)

    def end_epoch(self, epoch, mloss):
        """Validate the EMA, write results.csv and the checkpoints (rank 0 only); returns whether to stop early.
        An epoch that may end the run is validated and saved even with --noval or --nosave, so that the run's last
        results and weights are real; fitness equal to the best counts as better; --patience 0 never stops."""
        opt = self.opt
        patience = opt.patience or float('inf')
        final = epoch + 1 == opt.epochs or epoch - self.best_epoch >= patience
        if not opt.noval or final:  # else the last results are carried forward
            self.results = validate(self.ema, self.val_loader, self.names, loss_fn=self.loss_fn, dtype=self.amp)
        fitness = 0.1 * self.results['metrics/mAP_0.5'] + 0.9 * self.results['metrics/mAP_0.5:0.95']
        if fitness >= self.best_fitness:
            self.best_fitness = fitness
            self.best_epoch = epoch
        stop = epoch - self.best_epoch >= patience
        if not all(v.isfinite().all() for m in (self.raw, self.ema) for v in m.state_dict().values()):
            raise FloatingPointError('the weights are no longer finite')  # nothing written: last.pt keeps good ones
        row = {'epoch': epoch, **dict(zip([f'train/{k}' for k in LOSSES], mloss.tolist(), strict=True)),
               **self.results, **{f'x/lr{j}': g['lr'] for j, g in enumerate(self.optimizer.param_groups)}}
        write_results(self.save_dir / 'results.csv', row)
        plot_results(self.save_dir / 'results.csv')
        state = self.checkpoint(epoch)
        if not opt.nosave or final:
            save_atomic(state, self.weights_dir / 'last.pt')
            if self.best_epoch == epoch:
                save_atomic(state, self.weights_dir / 'best.pt')
            self.saved = epoch
            self.unsaved = None
        else:  # --nosave: a copy (the live tensors move on) off the GPU, written only if the run stops before its end
            self.unsaved = to_cpu(state)
        if stop:
            log(f'Stopping early: no improvement in the last {opt.patience} epochs; best was epoch {self.best_epoch}')
        return stop

    def checkpoint(self, epoch):
        """Everything --resume needs to continue exactly, and what load_model needs."""
        return dict(epoch=epoch, best_fitness=float(self.best_fitness), best_epoch=int(self.best_epoch),
                    updates=self.updates, last_opt_step=self.last_opt_step, model=self.raw.state_dict(),
                    ema=self.ema.state_dict(), hyp=self.hyp, optimizer=self.optimizer.state_dict(),
                    scaler=self.scaler.state_dict(), opt=vars(self.opt) | {'resume': False},
                    date=datetime.now().isoformat(), **self.raw.meta())

    def finish(self):
        """Strip last.pt and best.pt to the fp16 EMA weights people ship, then validate best.pt once more, fused,
        with the per-class table: that is the run's result."""
        best = self.weights_dir / 'best.pt'
        strip_checkpoint(self.weights_dir / 'last.pt')
        if not best.exists():  # with --nosave it may never have been saved
            return self.results
        strip_checkpoint(best)
        log(f'\nValidating {best}...')
        model = deepcopy(self.ema)  # this run's model, edits included, with the weights best.pt now holds
        model.load_state_dict(read_checkpoint(best)[1])
        half = self.amp if self.device.type == 'cuda' else None  # as the original on CUDA; fp32 on CPU
        return validate(model.fuse(), self.val_loader, self.names, iou_thres=0.65 if self.coco else 0.6,
                        loss_fn=self.loss_fn, dtype=half, verbose=True, plots_dir=self.save_dir)

    def fit(self):
        opt = self.opt
        log(f'Image sizes {opt.img} train, {opt.img} val; {self.train_loader.num_workers} dataloader workers; '
            f'{WORLD_SIZE} process(es); results to {self.save_dir}\nStarting training for {opt.epochs} epochs...')
        epoch = self.start_epoch
        t0 = time.time()
        try:
            for epoch in range(self.start_epoch, opt.epochs):
                mloss = self.train_epoch(epoch)
                stop = self.end_epoch(epoch, mloss) if MAIN else False
                if self.from_rank0(stop):  # every process must leave the loop together
                    break
        except (KeyboardInterrupt, FloatingPointError, torch.OutOfMemoryError) as e:
            saved = self.unsaved['epoch'] if self.unsaved else self.saved
            if MAIN and self.unsaved:  # the last complete epoch, so that --resume continues
                save_atomic(self.unsaved, self.weights_dir / 'last.pt')
            stop_run(e, self.weights_dir / 'last.pt', saved)
        finally:
            if self.ddp:
                dist.destroy_process_group()
        if MAIN:
            log(f'\n{epoch - self.start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.')
            self.finish()
            log(f'Results saved to {self.save_dir}')
        return self.save_dir


def build_model(opt, resumed=None, data_names=None):
    """The model saved in last.pt; or --cfg's scale (else the weights') with --weights transferred into it by name
    and shape. Its classes: --names, else the data YAML's, else the weights', else COCO's."""
    if resumed:
        model = YOLOv5(**{k: resumed[k] for k in ('scale', 'nc', 'names')}, p6=resumed.get('p6', False))
        model.load_state_dict(resumed['model'])
        return model
    meta, sd = or_exit(read_checkpoint, opt.weights) if opt.weights else (None, None)
    names = read_names(opt.names) if opt.names else data_names or (meta['names'] if meta else read_names())
    if opt.single_cls and len(names) != 1:  # every class trains as one
        names = ['item']
    arch = dict(scale=meta['scale'], p6=meta['p6']) if meta and not opt.cfg else dict(scale=opt.cfg or 'n')
    model = YOLOv5(**arch, nc=len(names), names=names)
    if meta:  # with --cfg the model keeps its own anchors
        own = model.state_dict()
        fits = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape
                and not (opt.cfg and 'anchors' in k)}
        model.load_state_dict(fits, strict=False)  # an edited block starts from scratch, the rest from the weights
        log(f'Transferred {len(fits)}/{len(own)} items from {opt.weights}')
    return model


def build_datasets(opt, data, names, hyp, stride, train=True, rect=True):  # rect False: a fixed-size ONNX
    """The validation set (rank 0 only; --task's split) and, for training, the augmented training set of
    data_spec(--data). --img is rounded up to a multiple of the model's stride first."""
    opt.img = check_img_size(opt.img, 2 * stride if train else 0, stride)  # the original's floor: 2 strides
    common = dict(cache=opt.cache, nc=len(names), single_cls=opt.single_cls, stride=stride)
    batch = opt.batch // WORLD_SIZE
    val, tr = None, None
    if MAIN:  # validation needs no gradients: twice the batch fits
        val = or_exit(YOLODataset, data[opt.task], opt.img, batch * 2 if train else batch, rect=rect, pad=0.5,
                      split=opt.task, prefix=f'{opt.task}: ', **common)
    if train:
        tr = or_exit(YOLODataset, data['train'], opt.img, batch, augment=True, hyp=hyp, rect=opt.rect,
                     seed=opt.seed, prefix='train: ', **common)
        if not sum(len(x) for x in tr.labels):
            raise SystemExit(f'ERROR: no labels found for {opt.data}: every image is a background. Each image\'s '
                             f'labels are read from the labels/ folder beside images/, e.g. {label_path(tr.files[0])}')
    return tr, val


def make_optimizer(model, name, lr, momentum, decay):
    """Three groups: biases (no decay), conv/linear weights (decay), normalization weights (no decay)."""
    groups = [dict(params=[], weight_decay=d) for d in (0.0, decay, 0.0)]
    for m in model.modules():
        is_norm = isinstance(m, nn.modules.batchnorm._BatchNorm)
        for pname, p in m.named_parameters(recurse=False):
            groups[0 if pname == 'bias' else 2 if is_norm else 1]['params'].append(p)
    if name == 'SGD':
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    return getattr(torch.optim, name)(groups, lr=lr, betas=(momentum, 0.999))  # Adam or AdamW: momentum is beta1


def ema_update(ema, model, updates, decay=0.9999, tau=2000):
    """Exponential moving average of the weights; the decay ramps up from 0 so early epochs count less."""
    d = decay * (1 - math.exp(-updates / tau))
    msd = model.state_dict()
    with torch.no_grad():
        for k, v in ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


def amp_agrees(model, image, size, dtype):
    """Do all mixed-precision outputs of model (in eval mode; all, not the detections that come and go) agree with
    fp32 on a real image to 10% (boxes as fractions of the image)? Some GPUs compute fp16 wrongly: fp32 there."""
    x = to_tensor(letterbox(cv2.imread(image), size, stride=model.max_stride)[0])[None]
    x = x.to(next(model.parameters()).device).float() / 255
    a, b = (next(predict(model, x, d))[0] for d in (None, dtype))
    scale = torch.tensor([x.shape[3], x.shape[2]] * 2 + [1] * (a.shape[2] - 4), device=a.device)
    return bool(((a - b).abs() / scale).max() < 0.1)


# ---------------------------------------------------------------------------------------------- validation
def match_predictions(pred, label_cls, label_boxes, iouv):
    """(n_pred, n_iou) bool: true positive at each IoU threshold; one label matches one prediction, best IoU first."""
    correct = np.zeros((len(pred), len(iouv)), bool)
    iou = box_iou(label_boxes, pred[:, :4])
    for i, t in enumerate(iouv):
        li, pi = torch.where((iou >= t) & (label_cls[:, None] == pred[:, 5]))
        m = torch.stack((li, pi, iou[li, pi]), 1).cpu().numpy()  # [label, prediction, iou]
        m = m[m[:, 2].argsort()[::-1]]
        m = m[np.unique(m[:, 1], return_index=True)[1]]  # not sorted again before the next line: the original's mAP
        correct[m[np.unique(m[:, 0], return_index=True)[1], 1].astype(int), i] = True
    return correct


def smooth(y, f):
    """A box filter over a fraction f of y, its ends padded with their values."""
    k = round(len(y) * f * 2) // 2 + 1
    return np.convolve(np.concatenate((np.full(k // 2, y[0]), y, np.full(k // 2, y[-1]))), np.ones(k) / k, 'valid')


def ap_per_class(tp, conf, pred_cls, target_cls, eps=1e-16):
    """Per class present in the labels: P and R at the confidence of best mean F1, AP at 10 IoUs; and the curves
    of precision against recall (IoU 0.5) and of F1 against confidence."""
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    px = np.linspace(0, 1, 1000)  # confidence thresholds (and recall values) where the curves are sampled
    ap = np.zeros((len(classes), tp.shape[1]))
    p, r, pr = np.zeros((3, len(classes), 1000))
    for ci, c in enumerate(classes):
        i = pred_cls == c
        if not i.any():
            continue
        tpc = tp[i].cumsum(0)
        fpc = (1 - tp[i]).cumsum(0)
        recall = tpc / (n_labels[ci] + eps)
        precision = tpc / (tpc + fpc)
        r[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)  # as functions of the confidence threshold
        p[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(tp.shape[1]):  # COCO's 101-point interpolated area under the precision envelope
            mrec = np.concatenate(([0.0], recall[:, j], [1.0]))
            mpre = np.flip(np.maximum.accumulate(np.flip(np.concatenate(([1.0], precision[:, j], [0.0])))))
            ap[ci, j] = np.trapezoid(np.interp(np.linspace(0, 1, 101), mrec, mpre), np.linspace(0, 1, 101))
            if j == 0:  # the curve of IoU 0.5, for the plot
                pr[ci] = np.interp(px, mrec, mpre)
    f1 = 2 * p * r / (p + r + eps)
    best = smooth(f1.mean(0), 0.1).argmax()
    return p[:, best], r[:, best], ap, classes.astype(int), n_labels, dict(px=px, pr=pr, f1=f1)


def summarize(stats, names, verbose, plots_dir=None):
    """YOLOv5's table (all classes, and each class with verbose) of the images' stats, the PR and F1 curves into
    plots_dir if given; returns mean P, R, mAP50, mAP50-95."""
    pf = '%22s' + '%11i' * 2 + '%11.3g' * 4
    seen = len(stats)
    stats = [np.concatenate(x, 0) for x in zip(*stats)]
    if not stats or not len(stats[3]):
        log('WARNING: no labels in the validation set, no metrics')
        return [0.0] * 4
    p, r, ap, classes, n_labels, curves = ap_per_class(*stats)
    ap50 = ap[:, 0]
    ap = ap.mean(1)
    log(pf % ('all', seen, n_labels.sum(), p.mean(), r.mean(), ap50.mean(), ap.mean()))
    for i, c in enumerate(classes if verbose and len(names) > 1 else []):
        log(pf % (names[c], seen, n_labels[i], p[i], r[i], ap50[i], ap[i]))
    if plots_dir:
        px = curves['px']
        present = [names[c] for c in classes]
        f1 = smooth(curves['f1'].mean(0), 0.05)
        plot_curve(px, curves['pr'], curves['pr'].mean(0), present, plots_dir / 'PR_curve.png', 'Recall',
                   'Precision', f'all classes {ap50.mean():.3f} mAP@0.5')
        plot_curve(px, curves['f1'], f1, present, plots_dir / 'F1_curve.png', 'Confidence', 'F1',
                   f'all classes {f1.max():.2f} at {px[f1.argmax()]:.3f}')
    return [p.mean(), r.mean(), ap50.mean(), ap.mean()]


@torch.inference_mode()
def validate(model, loader, names, conf_thres=0.001, iou_thres=0.6, max_det=300, loss_fn=None, dtype=None,
             verbose=False, plots_dir=None, augment=False, records=None):
    """Prints YOLOv5's validation table and returns {name in METRICS: value}. With plots_dir, also draws the first
    batch's predictions, the confusion matrix (and its counts as .csv), the PR and F1 curves there. augment: test-time
    augmentation; records: a list that gets each detection in COCO's results format."""
    device = next(model.parameters()).device
    model.eval()
    iouv = torch.linspace(0.5, 0.95, 10, device=device)
    stats = []  # per image: (true positives at each IoU, confidences, predicted classes, label classes)
    dt = [0.0, 0.0, 0.0]  # seconds: pre-processing, inference, NMS
    loss = torch.zeros(3, device=device)
    confusion = np.zeros((len(names) + 1, len(names) + 1)) if plots_dir else None
    log(('%22s' + '%11s' * 6) % ('Class', 'Images', 'Instances', 'P', 'R', 'mAP50', 'mAP50-95'))
    for bi, (imgs, targets, paths, to_orig) in enumerate(loader):
        t0 = time.perf_counter()
        imgs = imgs.to(device, non_blocking=True).float() / 255
        targets = targets.to(device)
        t1 = clock(device)
        preds = []
        raws = []
        t_nms = 0.0
        for pred, raw in predict(model, imgs, dtype, augment):  # NMS chunk by chunk: only a chunk's outputs are held
            t = clock(device)
            preds += non_max_suppression(pred, conf_thres, iou_thres, multi_label=True, max_det=max_det)
            t_nms += time.perf_counter() - t
            if loss_fn:
                raws.append(raw)
        dt = [a + b for a, b in zip(dt, (t1 - t0, time.perf_counter() - t1 - t_nms, t_nms))]
        if loss_fn:
            loss += loss_fn([torch.cat(r) for r in zip(*raws)], targets)[1]
        if plots_dir and bi == 0:
            plot_batch((imgs * 255).byte().cpu(), targets.cpu(), names, plots_dir / 'val_batch0_pred.jpg',
                       [p[p[:, 4] > 0.25].cpu() for p in preds])
        h, w = imgs.shape[2:]
        targets[:, 2:] *= torch.tensor((w, h, w, h), device=device)  # labels in pixels
        for si, pred in enumerate(preds):  # boxes compared in the original image's pixels, as YOLOv5 does
            lb = targets[targets[:, 0] == si, 1:]
            lb = torch.cat((lb[:, :1], scale_boxes(xywh2xyxy(lb[:, 1:5]), (h, w), *to_orig[si])), 1)
            pred = torch.cat((scale_boxes(pred[:, :4].clone(), (h, w), *to_orig[si]), pred[:, 4:]), 1)
            if plots_dir:
                confusion_add(confusion, pred, lb)
            if records is not None:
                records += coco_records(pred, paths[si])
            correct = match_predictions(pred, lb[:, 0], lb[:, 1:], iouv)
            stats.append((correct, pred[:, 4].cpu().numpy(), pred[:, 5].cpu().numpy(), lb[:, 0].cpu().numpy()))
    results = summarize(stats, names, verbose, plots_dir)
    if plots_dir:
        save_confusion_matrix(confusion, names, plots_dir)
    pre, inf, nms = (t * 1e3 / max(len(stats), 1) for t in dt)
    log(f'Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape '
        f'({loader.batch_size}, 3, {imgs.shape[2]}, {imgs.shape[3]})')
    return dict(zip(METRICS, [*map(float, results), *(loss.cpu() / max(len(loader), 1)).tolist()], strict=True))


# ---------------------------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', type=weights_file, default='yolov5n.pt', help="starting weights; '' for none")
    p.add_argument('--cfg', type=lambda t: Path(t).stem.replace('yolov5', ''), default='',
                   choices=['', *SCALES, *(s + '6' for s in SCALES)], help='model: n ... x, n6 ... x6, or yolov5s.yaml')
    p.add_argument('--data', default='coco128.yaml', help='data YAML, dataset root, images or .txt')
    p.add_argument('--single-cls', action='store_true', help='train every class as one')
    p.add_argument('--freeze', nargs='+', type=number(int, 0), default=[0], help='freeze N layers (10: backbone)')
    p.add_argument('--names', type=existing_file, help='class names, one a line')
    p.add_argument('--hyp', nargs='*', type=key_number(HYP, NOT_USED), default=[], metavar='KEY=VALUE or FILE.yaml',
                   help='override HYP entries')
    p.add_argument('--epochs', type=number(int, 1), default=100)
    p.add_argument('--batch', '--batch-size', type=number(int, 1), default=16, help='total over all processes')
    p.add_argument('--img', '--img-size', '--imgsz', type=number(int, 1), default=640)
    p.add_argument('--rect', action='store_true', help='rectangular training batches (no mosaic)')
    p.add_argument('--resume', nargs='?', type=checkpoint_file, const=True, help='the latest run or a last.pt')
    p.add_argument('--nosave', action='store_true', help='only save the final checkpoint')
    p.add_argument('--noval', action='store_true', help='only validate after the final epoch')
    p.add_argument('--noautoanchor', action='store_true')
    p.add_argument('--cache', nargs='?', const='ram', choices=['ram'], help='keep the images in memory')
    p.add_argument('--device', type=device_name, default='', help='cpu, 0, 0,1 ...')
    p.add_argument('--multi-scale', action='store_true', help='vary the image size by +-50%%')
    p.add_argument('--optimizer', default='SGD', choices=['SGD', 'Adam', 'AdamW'])
    p.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under DDP (CUDA)')
    p.add_argument('--workers', type=number(int, 0), help='loader workers per process')
    p.add_argument('--project', help='runs/train, or runs/val')
    p.add_argument('--name', default='exp')
    p.add_argument('--exist-ok', action='store_true')
    p.add_argument('--cos-lr', action='store_true', help='cosine learning-rate decay')
    p.add_argument('--label-smoothing', type=number(float, 0, 1), default=0.0)
    p.add_argument('--patience', type=number(int, 0), default=100, help='epochs without improvement')
    p.add_argument('--seed', type=number(int, 0), default=0)
    p.add_argument('--amp', choices=['auto', *AMP_TYPES], default='auto',
                   help='auto: fp16 on CUDA, bf16 on CPUs with AMX, else off')
    p.add_argument('--no-amp', dest='amp', action='store_const', const='off', help='--amp off: train in fp32')
    p.add_argument('--val-only', action='store_true', help='only validate --weights on --data')
    p.add_argument('--half', action='store_true', help='--val-only in 16 bits where faster, as --amp auto')
    p.add_argument('--verbose', action='store_true', help='per-class rows')
    p.add_argument('--conf-thres', type=number(float, 0, 1), default=0.001)
    p.add_argument('--iou-thres', type=number(float, 0, 1), default=0.6)
    p.add_argument('--max-det', type=number(int, 1), default=300)
    p.add_argument('--task', default='val', choices=['val', 'test'], help='--val-only on this split of --data')
    p.add_argument('--save-json', action='store_true', help='--val-only: COCO JSON too')
    p.add_argument('--augment', action='store_true', help='--val-only with test-time augmentation')
    opt = p.parse_args(argv)
    opt.hyp = [pair for pairs in opt.hyp for pair in pairs]
    opt.project = opt.project or ('runs/val' if opt.val_only else 'runs/train')
    processes = WORLD_SIZE if WORLD_SIZE > 1 else len(opt.device.split(','))  # --device 0,1: one per GPU
    if opt.batch % processes:
        p.error(f'argument --batch: {opt.batch} is not a multiple of the number of processes ({processes})')
    if processes > 1 and (opt.rect or opt.val_only):  # (every process takes every n-th image: mixed rect shapes)
        p.error(f'argument {"--rect" if opt.rect else "--val-only"}: one process only')
    return opt



def run_val_only(opt):
    device = select_device(opt.device)
    model = or_exit(load_any, opt.weights, device, fuse=True).to(memory_format=torch.channels_last)
    data = or_exit(data_spec, opt.data, opt.task)
    names = read_names(opt.names) if opt.names else data['names'] or model.names
    if len(names) != model.nc:  # as the original refuses: the boxes would carry classes the names don't have
        raise SystemExit(f'ERROR: {opt.weights} has {model.nc} classes, {opt.names or opt.data} names {len(names)}')
    fixed = getattr(model, 'fixed', None) is not None  # an ONNX file of fixed sizes takes square images
    _, val = build_datasets(opt, data, names, None, model.max_stride, train=False, rect=not fixed)
    save_dir = run_dir(opt.project, opt.name, opt.exist_ok)
    loader = create_dataloader(val, val.batch_size, opt.workers, cpu=device.type == 'cpu')
    records = [] if opt.save_json else None
    validate(model, loader, names, opt.conf_thres, opt.iou_thres, opt.max_det, verbose=opt.verbose or len(names) < 50,
             dtype=half_dtype(device) if opt.half else None, plots_dir=save_dir, augment=opt.augment, records=records)
    if opt.save_json:
        or_exit(save_coco_json, records, save_dir / f'{Path(opt.weights).stem}_predictions.json', data, val.files)
    log(f'Results saved to {save_dir}')



def main(argv=None):
    """The command line, with one message for running out of GPU memory anywhere: setup, AMP check, DDP, the epochs,
    the final validation, --val-only."""
    argv = sys.argv[1:] if argv is None else argv
    opt = parse_args(argv)
    gpus = len(opt.device.split(','))
    if gpus > 1 and LOCAL_RANK == -1:  # several GPUs: one process each (DDP), never one GPU silently
        run_under_torchrun(__file__, argv, gpus)
    try:
        return run_val_only(opt) if opt.val_only else Trainer(opt).fit()
    except torch.OutOfMemoryError:
        raise SystemExit(f'ERROR: out of GPU memory at --batch {opt.batch} --img {opt.img}: lower --batch '
                         f'(e.g. --batch {max(opt.batch // 2, 1)}) or --img, or use more GPUs') from None


if __name__ == '__main__':
    main()
