"""
YOLOv5's training loss: each label is matched to the anchors whose shape is within anchor_t of its own,
in its own grid cell and the two neighbouring cells nearest to its centre; matched predictions get a
CIoU box loss and a class BCE, and every prediction an objectness BCE whose target is the detached IoU.
"""
import math

import torch
import torch.nn as nn

from model import decode_boxes


def bbox_ciou(box1, box2, eps=1e-7):
    """Complete IoU of paired xywh boxes (n, 4): IoU - centre distance term - aspect ratio term."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (b1x2.minimum(b2x2) - b1x1.maximum(b2x1)).clamp(0) * (b1y2.minimum(b2y2) - b1y1.maximum(b2y1)).clamp(0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw, ch = b1x2.maximum(b2x2) - b1x1.minimum(b2x1), b1y2.maximum(b2y2) - b1y1.minimum(b2y1)  # enclosing box
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


class FocalBCE(nn.Module):
    """BCE scaled down for easy examples: * alpha_t * (1 - p_t) ** gamma (Lin et al., 2017)."""
    def __init__(self, pos_weight, gamma=1.5, alpha=0.25):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction='none')
        self.gamma, self.alpha = gamma, alpha

    def forward(self, pred, true):
        p = torch.sigmoid(pred)
        p_t = true * p + (1 - true) * (1 - p)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        return (self.bce(pred, true) * alpha_t * (1.0 - p_t) ** self.gamma).mean()


class YOLOLoss:
    """hyp needs box, obj, cls (the gains for 3 levels, 80 classes and 640 pixels), cls_pw, obj_pw, anchor_t,
    fl_gamma and label_smoothing."""
    gr = 1.0                   # objectness target = gr * IoU + (1 - gr)

    def __init__(self, model, hyp, img_size=640):
        nl = model.detect.nl
        # objectness weight of P3, P4, ...: small objects are many and hard
        self.balance = [4.0, 1.0, 0.4] if nl == 3 else [4.0, 1.0, 0.25, 0.06]
        # The gains scale with the model and the images, so that one hyp file suits all: the box and class terms are
        # sums over levels (3 / nl) and the class BCE a mean over classes (nc / 80); objectness counts every cell,
        # whose number grows with the image's area ((img_size / 640) ** 2).
        self.hyp = dict(hyp, box=hyp['box'] * 3 / nl, cls=hyp['cls'] * model.nc / 80 * 3 / nl,
                        obj=hyp['obj'] * (img_size / 640) ** 2 * 3 / nl)
        device = next(model.parameters()).device
        bce = lambda pw: (FocalBCE(torch.tensor([pw], device=device), hyp['fl_gamma']) if hyp['fl_gamma'] > 0
                          else nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pw], device=device)))
        self.bce_cls = bce(hyp['cls_pw'])
        self.bce_obj = bce(hyp['obj_pw'])
        self.cls_pos = 1.0 - 0.5 * hyp['label_smoothing']  # class targets, smoothed
        self.cls_neg = 0.5 * hyp['label_smoothing']
        self.nc = model.detect.nc
        self.na = model.detect.na
        self.anchors = model.detect.anchors  # in grid units; the same tensor that autoanchor changes

    def __call__(self, preds, targets):
        """preds: the 3 raw maps (b, na, ny, nx, 5+nc); targets (n, 6): image index, class, xywh normalized.
        Returns (loss * batch size, detached [box, obj, cls])."""
        lbox, lobj, lcls = (torch.zeros(1, device=targets.device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        for i, (p, (b, a, gj, gi)) in enumerate(zip(preds, indices)):
            tobj = torch.zeros_like(p[..., 4])
            if len(b):
                pxywh, _, pcls = p[b, a, gj, gi].split((4, 1, self.nc), 1)
                pbox = decode_boxes(pxywh, -0.5, anchors[i])  # relative to the cell's corner, in grid units
                iou = bbox_ciou(pbox, tbox[i])
                lbox += (1.0 - iou).mean()
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * iou.detach().clamp(0).type(tobj.dtype)
                if self.nc > 1:  # a single class has nothing to classify
                    t = torch.full_like(pcls, self.cls_neg)
                    t[range(len(b)), tcls[i]] = self.cls_pos
                    lcls += self.bce_cls(pcls, t)
            lobj += self.bce_obj(p[..., 4], tobj) * self.balance[i]
        lbox = lbox * self.hyp['box']
        lobj = lobj * self.hyp['obj']
        lcls = lcls * self.hyp['cls']
        return (lbox + lobj + lcls) * preds[0].shape[0], torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds, targets):
        """For each level: the (image, anchor, cell y, cell x) of every positive sample, its class, its box
        as (offset from the cell corner, wh) in grid units, and its anchor."""
        na = self.na
        device = targets.device
        tcls = []  # per level: classes, boxes, (image, anchor, cell y, cell x), anchors
        tbox = []
        indices = []
        anch = []
        anchor_index = torch.arange(na, device=device).float().view(na, 1).repeat(1, targets.shape[0])
        targets = torch.cat((targets.repeat(na, 1, 1), anchor_index[..., None]), 2)  # (na, nt, 7), one copy per anchor
        g = 0.5  # a centre this close to a cell border also makes the neighbour cell a positive
        offsets_all = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device).float() * g
        gain = torch.ones(7, device=device)
        for anchors, shape in zip(self.anchors, [p.shape for p in preds]):
            gain[2:6] = torch.tensor(shape, device=device)[[3, 2, 3, 2]].float()  # normalized -> grid units
            t = targets * gain
            r = t[..., 4:6] / anchors[:, None]  # wh ratio to each anchor
            t = t[torch.max(r, 1 / r).max(2)[0] < self.hyp['anchor_t']]
            gxy = t[:, 2:4]
            gxi = gain[[2, 3]] - gxy  # distance from the far borders
            # Each label trains its own cell and the two neighbours nearest to its centre: a centre in the left half
            # of its cell also trains the cell on the left, and so on (a cell's prediction reaches 0.5 beyond it).
            left, top = ((gxy % 1 < g) & (gxy > 1)).T  # near the left / top border (and not in the first cell)
            right, bottom = ((gxi % 1 < g) & (gxi > 1)).T  # near the right / bottom border
            use = torch.stack((torch.ones_like(left), left, top, right, bottom))  # (5, n): which of the 5 cells
            t = t.repeat((5, 1, 1))[use]  # one row per (label, cell) pair
            offsets = (torch.zeros_like(gxy)[None] + offsets_all[:, None])[use]  # each row's step to its cell
            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a = a.long().view(-1)
            b, c = bc.long().T  # image in the batch, class
            gij = (gxy - offsets).long().clamp(min=0).minimum(gain[[2, 3]].long() - 1)  # inside the grid
            indices.append((b, a, gij[:, 1], gij[:, 0]))
            tbox.append(torch.cat((gxy - gij, gwh), 1))  # the box relative to the (clamped) cell it is assigned to
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
