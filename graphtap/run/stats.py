"""Streaming statistics of activations: each batch is folded in and then let go, so the
memory held is a few numbers per tensor and per channel, however much data passes.

Mean, std, min and max are over the finite values; NaNs and infinities are counted apart
(one NaN would otherwise turn every statistic into NaN). Per channel means the last axis.
Sums are kept in float64, and batches are merged with Chan et al.'s pairwise update of
the mean and the sum of squared deviations, so long streams lose no precision.
"""

import numpy as np


class RunningStats:
    """Statistics of one tensor over every batch passed to `add`."""

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
        """Folds in one batch (first axis: examples)."""
        values = np.asarray(batch)
        if self.shape is None:
            self.shape = values.shape[1:]
        if values.dtype.kind in "OSU":  # tf.string: counted, no numeric statistics
            self.count += values.size
            self.is_string = True
            return
        if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
            values = values.astype(np.float64)
        self.count += values.size
        self.zeros += int(np.count_nonzero(values == 0))
        if np.issubdtype(values.dtype, np.inexact):  # floating or complex: may be NaN or Inf
            finite_mask = np.isfinite(values)
            self.nans += int(np.count_nonzero(np.isnan(values)))
            self.infs += int(np.count_nonzero(np.isinf(values)))
        else:
            finite_mask = np.ones(values.shape, dtype=bool)
        finite = values[finite_mask].astype(np.float64)
        if finite.size:
            batch_mean = float(finite.mean())
            batch_m2 = float(np.square(finite - batch_mean).sum())
            total = self.finite + finite.size
            delta = batch_mean - self.mean
            self.mean += delta * finite.size / total
            self.m2 += batch_m2 + delta * delta * self.finite * finite.size / total
            self.finite = total
            self.min = min(self.min, float(finite.min()))
            self.max = max(self.max, float(finite.max()))
        if values.ndim >= 2:
            self._add_channels(values, finite_mask)

    def _add_channels(self, values, finite_mask):
        channels = values.shape[-1]
        flat = values.reshape(-1, channels)
        mask = finite_mask.reshape(-1, channels)
        if self.channel_sum is None:
            self.channel_finite = np.zeros(channels, np.int64)
            self.channel_sum = np.zeros(channels, np.float64)
            self.channel_zeros = np.zeros(channels, np.int64)
        self.channel_finite += mask.sum(axis=0)
        self.channel_sum += np.where(mask, flat, 0).astype(np.float64).sum(axis=0)
        self.channel_zeros += (flat == 0).sum(axis=0)

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
            rows = self.count // len(self.channel_sum)
            with np.errstate(invalid="ignore", divide="ignore"):
                means = self.channel_sum / self.channel_finite
            result["channel_mean"] = [None if np.isnan(m) else float(m) for m in means]
            result["channel_zero_fraction"] = (self.channel_zeros / rows).tolist() if rows else None
        return result
