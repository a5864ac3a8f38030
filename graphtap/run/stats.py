"""Statistics of activations as mergeable partials: each batch becomes a `RunningStats` of
its own (a few numbers per tensor and per channel) and is merged into the running one, so
the memory held does not grow with the data, and partials computed anywhere (in the
graph, in another process, on a Beam worker) merge into the same result in any order.

Mean, std, min and max are over the finite values; NaNs and infinities are counted apart
(one NaN would otherwise turn every statistic into NaN). Per channel means the last axis.
A batch's partial holds its mean and M2, the sum of squared deviations from that mean
(never a raw sum of squares, which cancels catastrophically when the mean is large
against the spread); partials are merged in float64 with Chan et al.'s pairwise update
(`RunningStats.merge`, the one definition every path uses), so long streams lose no
precision. `graph_partials` computes a batch's partials inside TensorFlow, next to the
model, so that only these numbers, not the activations, reach Python.
"""

import numpy as np


class RunningStats:
    """Statistics of one tensor over every batch added or partial merged into it."""

    def __init__(self):
        self.count = 0  # values seen, finite or not
        self.finite = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean, over finite values
        self.min = np.inf
        self.max = -np.inf
        self.zeros = 0
        self.nans = 0
        self.infs = 0
        self.shape = None  # of one example: the batch's shape without its first axis
        self.channel_finite = None  # per channel of the last axis
        self.channel_sum = None
        self.channel_zeros = None
        self.is_string = False

    def add(self, batch):
        """Folds in one batch of values (first axis: examples), computed with numpy."""
        return self.merge(self.of_values(batch))

    @classmethod
    def of_values(cls, batch):
        """The partial of one batch of values (first axis: examples), with numpy."""
        part = cls()
        values = np.asarray(batch)
        part.shape = tuple(values.shape[1:])
        part.count = values.size
        if values.dtype.kind in "OSU":  # tf.string: counted, no numeric statistics
            part.is_string = True
            return part
        if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
            values = values.astype(np.float64)
        part.zeros = int(np.count_nonzero(values == 0))
        if np.issubdtype(values.dtype, np.inexact):  # floating or complex: may be NaN or Inf
            finite_mask = np.isfinite(values)
            part.nans = int(np.count_nonzero(np.isnan(values)))
            part.infs = int(np.count_nonzero(np.isinf(values)))
        else:
            finite_mask = np.ones(values.shape, dtype=bool)
        finite = values[finite_mask].astype(np.float64)
        part.finite = finite.size
        if finite.size:
            part.mean = float(finite.mean())
            part.m2 = float(np.square(finite - part.mean).sum())
            part.min, part.max = float(finite.min()), float(finite.max())
        if values.ndim >= 2:
            channels = values.shape[-1]
            flat = values.reshape(-1, channels)
            mask = finite_mask.reshape(-1, channels)
            part.channel_finite = mask.sum(axis=0).astype(np.int64)
            part.channel_sum = np.where(mask, flat, 0).astype(np.float64).sum(axis=0)
            part.channel_zeros = (flat == 0).sum(axis=0).astype(np.int64)
        return part

    @classmethod
    def of_graph(cls, partial):
        """The partial of one batch from what `graph_partials` computed for a tensor
        (as numpy values)."""
        part = cls()
        part.shape = tuple(int(d) for d in partial["shape"][1:])
        part.count = int(np.prod(partial["shape"], dtype=np.int64))
        if "finite" not in partial:
            part.is_string = True
            return part
        part.finite = int(partial["finite"])
        part.zeros, part.nans, part.infs = (int(partial[k]) for k in ("zeros", "nans", "infs"))
        if part.finite:
            part.mean, part.m2 = float(partial["mean"]), float(partial["m2"])
            part.min, part.max = float(partial["min"]), float(partial["max"])
        if len(part.shape) >= 1:  # a batch of rank >= 2
            part.channel_finite = partial["channel_finite"].astype(np.int64)
            part.channel_sum = partial["channel_sum"].astype(np.float64)
            part.channel_zeros = partial["channel_zeros"].astype(np.int64)
        return part

    def merge(self, other):
        """Folds the partial `other` into this one (Chan et al.) and returns this one.
        Associative and commutative up to float rounding; `other` is left as it was."""
        if self.shape is None:
            self.shape = other.shape
        self.count += other.count
        self.is_string |= other.is_string
        self.zeros += other.zeros
        self.nans += other.nans
        self.infs += other.infs
        if other.finite:
            total = self.finite + other.finite
            delta = other.mean - self.mean
            self.mean += delta * other.finite / total
            self.m2 += other.m2 + delta * delta * self.finite * other.finite / total
            self.finite = total
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)
        if other.channel_sum is not None:
            if self.channel_sum is None:
                self.channel_finite = np.zeros_like(other.channel_finite)
                self.channel_sum = np.zeros_like(other.channel_sum)
                self.channel_zeros = np.zeros_like(other.channel_zeros)
            self.channel_finite += other.channel_finite
            self.channel_sum += other.channel_sum
            self.channel_zeros += other.channel_zeros
        return self

    def summary(self):
        """The statistics as JSON-ready data."""
        found = self.finite > 0
        result = {
            "count": self.count,
            "mean": self.mean if found else None,
            "std": float(np.sqrt(self.m2 / self.finite)) if found else None,
            "min": self.min if found else None,
            "max": self.max if found else None,
            "zero_fraction": self.zeros / self.count if self.count and not self.is_string
            else None,
            "nan_count": self.nans,
            "inf_count": self.infs,
            "example_shape": list(self.shape) if self.shape is not None else None,
        }
        if self.channel_sum is not None:
            rows = self.count // len(self.channel_sum) if len(self.channel_sum) else 0
            with np.errstate(invalid="ignore", divide="ignore"):
                means = self.channel_sum / self.channel_finite
            result["channel_mean"] = [None if np.isnan(m) else float(m) for m in means]
            result["channel_zero_fraction"] = (self.channel_zeros / rows).tolist() if rows else None
        return result


def in_graph(tensor):
    """Whether `graph_partials` computes the partial of this tensor in the graph (real
    numbers, booleans and strings of known rank >= 1); others go to the host as values."""
    dtype = tensor.dtype
    known = tensor.shape.rank is not None and tensor.shape.rank >= 1
    return known and (dtype.is_floating or dtype.is_integer or dtype.is_bool
                      or dtype.name == "string")


def graph_partials(tensor):
    """TensorFlow ops computing the partial of one batch of `tensor` (for which `in_graph`
    holds): a dict of tensors that `RunningStats.of_graph` reads once they are numpy.

    Sums, the mean and M2 are in float64; min and max in the tensor's dtype (exact). They
    assume every value is finite, which holds when `finite_sum` (the sum of all values) is
    finite: when it is not, the caller computes the batch's partial from the values with
    `RunningStats.of_values` instead, which counts NaNs and infinities and leaves them out.
    (A branch in the graph for that case, one tf.cond per tensor, made tracing and the
    first call several times slower for a model with a hundred taps.)
    """
    import tensorflow as tf

    shape = tf.shape(tensor, out_type=tf.int64)
    if tensor.dtype == tf.string:
        return {"shape": shape}
    rank = tensor.shape.rank
    channels = shape[-1] if rank >= 2 else tf.constant(1, tf.int64)
    rows = tf.reduce_prod(shape[:-1]) if rank >= 2 else shape[0]
    shape_2d = tf.stack([rows, channels])
    flat = tf.cast(tf.reshape(tensor, shape_2d), tf.float64)
    # Counts of a batch's rows fit int32 (a tensor holds fewer than 2**31 values).
    zeros = tf.equal(tf.reshape(tensor, shape_2d), tf.zeros([], tensor.dtype))
    channel_zeros = tf.cast(tf.reduce_sum(tf.cast(zeros, tf.int32), axis=0), tf.int64)
    channel_sum = tf.reduce_sum(flat, axis=0)
    count = rows * channels
    total = tf.reduce_sum(channel_sum)
    mean = tf.math.divide_no_nan(total, tf.cast(count, tf.float64))
    exact = flat if tensor.dtype.is_bool else tensor  # min, max: exact in its own dtype
    partial = {
        "shape": shape, "finite": count, "finite_sum": total, "mean": mean,
        "m2": tf.reduce_sum(tf.math.squared_difference(flat, mean)),
        "min": tf.cast(tf.reduce_min(exact), tf.float64),
        "max": tf.cast(tf.reduce_max(exact), tf.float64),
        "zeros": tf.reduce_sum(channel_zeros), "nans": tf.constant(0, tf.int64),
        "infs": tf.constant(0, tf.int64),
    }
    if rank >= 2:
        partial.update(channel_finite=tf.fill(tf.reshape(channels, [1]), rows),
                       channel_sum=channel_sum, channel_zeros=channel_zeros)
    return partial
