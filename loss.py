"""
YOLOv5's loss: each label matched to the anchors whose shape is within anchor_t of its own, in its
cell and the two neighbours nearest its centre; a CIoU box loss and a class BCE for the matches, an
objectness BCE for every prediction, with the (detached) IoU as its target.
"""
import math

import torch
import torch.nn as nn

from model import decode_boxes


def bbox_ciou(box1, box2, eps=1e-7):
    """Complete IoU of paired xywh boxes (n, 4): IoU - centre distance term - aspect ratio term."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    left1, right1, top1, bottom1 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    left2, right2, top2, bottom2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter_w = (right1.minimum(right2) - left1.maximum(left2)).clamp(0)
    inter_h = (bottom1.minimum(bottom2) - top1.maximum(top2)).clamp(0)
    inter = inter_w * inter_h
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    enclosing_w = right1.maximum(right2) - left1.minimum(left2)
    enclosing_h = bottom1.maximum(bottom2) - top1.minimum(top2)
    diagonal2 = enclosing_w ** 2 + enclosing_h ** 2 + eps
    distance2 = ((left2 + right2 - left1 - right1) ** 2 + (top2 + bottom2 - top1 - bottom1) ** 2)
    distance2 = distance2 / 4  # between the centres
    aspect = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = aspect / (aspect - iou + (1 + eps))
    return iou - (distance2 / diagonal2 + aspect * alpha)


def shape_ratio(wh, anchors):
    """How far each box's (w, h) (n, 2) is from each anchor's (a, 2): the largest of w / anchor w,
    its inverse, and the same for h. The test of assignment, and of autoanchor."""
    ratio = wh[:, None] / anchors[None]
    return torch.max(ratio, 1 / ratio).max(2)[0]


def level_weights(levels):
    """Objectness weight of each level, the finest first (small objects are many and hard)."""
    if levels == 3:
        return [4.0, 1.0, 0.4]
    if levels > 5:
        raise ValueError(f'no objectness weights for {levels} levels: add them to level_weights')
    return [4.0, 1.0, 0.25, 0.06, 0.02][:levels]


class FocalBCE(nn.Module):
    """BCE scaled down for easy examples: * alpha_t * (1 - p_t) ** gamma (Lin et al., 2017)."""
    def __init__(self, pos_weight, gamma=1.5, alpha=0.25):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction='none')
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, pred, true):
        prob = torch.sigmoid(pred)
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        return (self.bce(pred, true) * alpha_t * (1.0 - p_t) ** self.gamma).mean()


class YOLOLoss:
    """hyp: the gains box, obj, cls (for 3 levels, 80 classes, 640 pixels), cls_pw, obj_pw,
    anchor_t, fl_gamma, label_smoothing."""
    iou_ratio = 1.0  # objectness target = iou_ratio * IoU + (1 - iou_ratio)

    def __init__(self, model, hyp, img_size=640):
        levels = model.detect.nl
        self.obj_weights = level_weights(levels)
        # The gains scale, so that one hyp file suits every model and size: the terms sum over
        # levels (3 / levels), the class BCE averages classes (nc / 80), objectness every cell.
        self.hyp = dict(hyp, box=hyp['box'] * 3 / levels,
                        cls=hyp['cls'] * model.nc / 80 * 3 / levels,
                        obj=hyp['obj'] * (img_size / 640) ** 2 * 3 / levels)
        device = next(model.parameters()).device
        self.bce_cls = self.bce(hyp['cls_pw'], hyp['fl_gamma'], device)
        self.bce_obj = self.bce(hyp['obj_pw'], hyp['fl_gamma'], device)
        self.cls_pos = 1.0 - 0.5 * hyp['label_smoothing']  # class targets, smoothed
        self.cls_neg = 0.5 * hyp['label_smoothing']
        self.nc = model.detect.nc
        self.na = model.detect.na
        self.anchors = model.detect.anchors  # in grid units; the tensor that autoanchor changes

    @staticmethod
    def bce(pos_weight, focal_gamma, device):
        pos_weight = torch.tensor([pos_weight], device=device)
        if focal_gamma > 0:
            return FocalBCE(pos_weight, focal_gamma)
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def __call__(self, preds, targets):
        """preds: each level's raw maps (b, na, ny, nx, 5 + nc); targets (n, 6): image, class, xywh.
        Returns the loss times the batch size, and its terms by name."""
        box_loss = torch.zeros(1, device=targets.device)
        obj_loss = torch.zeros(1, device=targets.device)
        cls_loss = torch.zeros(1, device=targets.device)
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        for i, (pred, (image, anchor, cell_y, cell_x)) in enumerate(zip(preds, indices)):
            tobj = torch.zeros_like(pred[..., 4])
            if len(image):
                pxywh, _, pcls = pred[image, anchor, cell_y, cell_x].split((4, 1, self.nc), 1)
                # offsets -0.5: the cell's corner (0) less 0.5; in grid units, as tbox
                pbox = decode_boxes(pxywh, -0.5, anchors[i])
                ciou = bbox_ciou(pbox, tbox[i])
                box_loss += (1.0 - ciou).mean()
                iou_target = ciou.detach().clamp(0).type(tobj.dtype)
                ratio = self.iou_ratio
                tobj[image, anchor, cell_y, cell_x] = 1 - ratio + ratio * iou_target
                if self.nc > 1:  # a single class has nothing to classify
                    target = torch.full_like(pcls, self.cls_neg)
                    target[range(len(image)), tcls[i]] = self.cls_pos
                    cls_loss += self.bce_cls(pcls, target)
            obj_loss += self.bce_obj(pred[..., 4], tobj) * self.obj_weights[i]
        terms = dict(box_loss=box_loss * self.hyp['box'], obj_loss=obj_loss * self.hyp['obj'],
                     cls_loss=cls_loss * self.hyp['cls'])
        loss = sum(terms.values()) * preds[0].shape[0]
        return loss, {name: term.detach()[0] for name, term in terms.items()}

    def build_targets(self, preds, targets):
        """Per level, of every positive sample: its class, its box (offset from its cell's corner,
        wh) in grid units, its (image, anchor, cell y, cell x) and its anchor."""
        device = targets.device
        tcls = []  # per level
        tbox = []
        indices = []
        matched_anchors = []
        # one copy of the labels per anchor, with the anchor's number last: (na, n, 7)
        anchor_index = torch.arange(self.na, device=device).float().view(self.na, 1)
        anchor_index = anchor_index.repeat(1, targets.shape[0])
        targets = torch.cat((targets.repeat(self.na, 1, 1), anchor_index[..., None]), 2)
        # A label trains its own cell and the two neighbours nearest its centre (a prediction
        # reaches 0.5 beyond its cell). A candidate's cell is the centre less its step: own, left
        # (x - 0.5 for a centre in the left half of its cell), top, right, bottom.
        half = 0.5
        steps = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device) * half
        gain = torch.ones(7, device=device)
        for anchors, pred in zip(self.anchors, preds):
            grid_size = torch.tensor(pred.shape, device=device)[[3, 2]].float()  # (nx, ny)
            gain[2:6] = grid_size.repeat(2)  # normalized -> grid units
            labels = targets * gain
            fits = shape_ratio(labels[0, :, 4:6], anchors).T < self.hyp['anchor_t']  # (na, n)
            labels = labels[fits]
            xy = labels[:, 2:4]  # (n, 2), n the labels that fit an anchor
            xy_from_far_side = grid_size - xy
            left, top = ((xy % 1 < half) & (xy > 1)).T  # (n,) each; never a cell outside the grid
            right, bottom = ((xy_from_far_side % 1 < half) & (xy_from_far_side > 1)).T
            use = torch.stack((torch.ones_like(left), left, top, right, bottom))  # (5, n)
            labels = labels.repeat((5, 1, 1))[use]  # (m, 7): one row per (label, cell) pair
            offsets = (torch.zeros_like(xy)[None] + steps[:, None])[use]  # (m, 2): each row's step
            image, cls = labels[:, :2].long().T
            xy = labels[:, 2:4]
            wh = labels[:, 4:6]
            anchor = labels[:, 6].long()
            cell = (xy - offsets).long().clamp(min=0).minimum(grid_size.long() - 1)  # in the grid
            indices.append((image, anchor, cell[:, 1], cell[:, 0]))
            tbox.append(torch.cat((xy - cell, wh), 1))  # the box, from the corner of its cell
            matched_anchors.append(anchors[anchor])
            tcls.append(cls)
        return tcls, tbox, indices, matched_anchors
