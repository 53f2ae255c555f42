"""The pretraining losses: softmax cross-entropy as a forward/backward pair.

Both BERT objectives are a mean cross-entropy over rows of logits:
    MLM: L = -1/P sum_p log softmax(logits_p)[y_p] over the P labelled (masked) positions,
         the seed's L = -sum_i y_i log(y_hat_i) with y one-hot, averaged;
    NSP: the same with 2 classes over the B [CLS] rows. A 2-way softmax is a binary
         logistic model: softmax([z0, z1])[1] = sigmoid(z1 - z0), so its cross-entropy is
         exactly the seed's binary cross-entropy on p = sigmoid(z1 - z0)
         (docs/internals.md works it through).
Shapes: logits (R, K), targets (R,) integer class ids; R rows, K classes.
Regression heads (BertForSequenceClassification with one output) use the mean squared
error pair below: pred, target (R,).
The task heads that label some rows and not others (a token tagger's -100 positions, a
question-answering window's out-of-range answers) use cross_entropy_ignore: the mean over
the rows whose target is not ignore_index, torch's CrossEntropyLoss(ignore_index=...).
"""
from minibert import backend, kernels


def cross_entropy_forward(logits, targets, count=None):
    """Cross-entropy summed over rows and divided by count (default R: the mean). R == 0
    rows gives loss 0 (defined, never NaN).

    count is the data-parallel case: a process holding R of a global batch's rows divides
    by the global number of rows, so the processes' losses (and gradients) add up to the
    mean over the whole batch (minibert/distributed.py)."""
    xp = backend.xp
    R = logits.shape[0]
    if R == 0:  # nothing labelled: a defined zero loss whose gradient is empty
        return xp.zeros((), dtype=logits.dtype), (xp.zeros_like(logits), targets, 0)
    count = R if count is None else count
    # log softmax(logits)[y] = logits[y] - log sum_k exp(logits_k); the log-sum-exp is taken
    # with the row max subtracted so exp cannot overflow (kernels.softmax_lse_plain)
    probs, lse = kernels.softmax_lse(logits)  # (R, K), (R,)
    logp_target = logits[xp.arange(R), targets] - lse  # (R,)
    loss = -logp_target.mean() if count == R else -logp_target.sum() / count  # ()
    # backward needs the probabilities, the targets and the divisor
    return loss, (probs, targets, count)


def cross_entropy_backward(dloss, cache):
    xp = backend.xp
    probs, targets, count = cache
    R = probs.shape[0]
    if R == 0:
        return (probs.copy(),)  # (0, K)
    # forward: loss = -1/count sum_r log probs[r, y_r], so dlogits = (probs - onehot(y)) / count
    dlogits = probs.copy()  # (R, K)
    dlogits[xp.arange(R), targets] -= 1.0
    dlogits *= dloss / count
    return (dlogits,)


def cross_entropy_ignore_forward(logits, targets, ignore_index):
    """Mean cross-entropy over the R' rows whose target is not ignore_index, as torch's
    CrossEntropyLoss(ignore_index=...) computes it. logits (R, K), targets (R,).

    R' == 0 gives loss 0 and a zero gradient, as cross_entropy_forward does for no rows;
    torch gives the same zero gradient and a NaN loss (a mean over no elements)."""
    xp = backend.xp
    keep = xp.flatnonzero(targets != ignore_index)  # (R',) rows that carry a target
    loss, c_ce = cross_entropy_forward(logits[keep], targets[keep])  # (), cache over (R', K)
    # backward scatters the kept rows' gradient back among R rows
    return loss, (keep, logits.shape, c_ce)


def cross_entropy_ignore_backward(dloss, cache):
    xp = backend.xp
    keep, shape, c_ce = cache
    # forward: loss = cross_entropy(logits[keep], targets[keep]): the kept rows get that
    # gradient, the ignored rows none
    (dkept,) = cross_entropy_backward(dloss, c_ce)  # (R', K)
    dlogits = xp.zeros(shape, dtype=dkept.dtype)  # (R, K)
    dlogits[keep] = dkept  # plain assignment: flatnonzero never repeats a row
    return (dlogits,)


# ----------------------------------------------------------------------------------------
# mean squared error: loss = 1/B sum_b (pred_b - target_b)^2


def mse_forward(pred, target):
    """Mean squared error over B rows; pred and target (B,). B == 0 gives a defined 0."""
    xp = backend.xp
    B = pred.shape[0]
    if B == 0:
        return xp.zeros((), dtype=pred.dtype), (pred - target, 0)
    diff = pred - target  # (B,)
    loss = (diff * diff).mean()  # ()
    # backward needs the residuals only
    return loss, (diff, B)


def mse_backward(dloss, cache):
    diff, B = cache
    if B == 0:
        return (diff.copy(),)  # (0,)
    # forward: loss = 1/B sum diff^2 with diff = pred - target, so dpred = 2 diff / B
    dpred = diff * (2.0 * dloss / B)  # (B,)
    return (dpred,)
