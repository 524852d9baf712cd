"""Fixed-size balanced sampling of positives and negatives (static shapes, jit/vmap)."""

import jax
import jax.numpy as jnp


def _random_candidates(key: jax.Array, candidates: jax.Array, k: int) -> jax.Array:
  """k indices, the candidates first in uniformly random order (random priorities + top_k).

  Args:
    key: PRNG key.
    candidates: [N] bool.
    k: number of indices to return (any k >= 0; entries past min(k, N) are 0).

  Returns:
    [k] int32; the first #candidates entries (up to k) are distinct candidates.
  """
  num = candidates.shape[0]
  # Non-candidates get priority -1, below every uniform [0, 1) draw.
  priority = jnp.where(candidates, jax.random.uniform(key, (num,)), -1.0)
  # Unfused from the random draws: XLA:TPU takes 84 s to compile the fused top-k over an
  # image's 279k anchors, 2.6 s this way (docs/benchmarks.md, "TPU ahead of time").
  priority = jax.lax.optimization_barrier(priority)
  _, indices = jax.lax.top_k(priority, min(k, num))
  return jnp.pad(indices.astype(jnp.int32), (0, k - min(k, num)))


def sample_balanced(key: jax.Array, positive: jax.Array, negative: jax.Array,
                    num_samples: int, positive_fraction: float
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """torchvision's BalancedPositiveNegativeSampler for one image, with static shapes.

  num_pos = min(int(num_samples * positive_fraction), #positive),
  num_neg = min(num_samples - num_pos, #negative), each drawn uniformly without
  replacement. An element marked both positive and negative counts as positive.

  Output order: slots [0, num_pos) hold the positives, slots [num_pos, num_pos + num_neg)
  the negatives (each group in random order), the remaining slots are padding (index 0,
  valid False).

  Args:
    key: PRNG key.
    positive: [N] bool positive candidates.
    negative: [N] bool negative candidates.
    num_samples: total sample slots (static).
    positive_fraction: target fraction of positives.

  Returns:
    indices: [num_samples] int32 into [N], 0 where not valid.
    valid: [num_samples] bool.
    is_positive: [num_samples] bool, False for negatives and padding.
  """
  negative = negative & ~positive
  pos_key, neg_key = jax.random.split(key)
  num_pos = jnp.minimum(int(num_samples * positive_fraction), jnp.sum(positive))
  num_neg = jnp.minimum(num_samples - num_pos, jnp.sum(negative))
  pos_indices = _random_candidates(pos_key, positive, num_samples)
  neg_indices = _random_candidates(neg_key, negative, num_samples)
  slots = jnp.arange(num_samples)
  is_positive = slots < num_pos
  valid = slots < num_pos + num_neg
  indices = jnp.where(is_positive, pos_indices,
                      neg_indices[jnp.clip(slots - num_pos, 0, num_samples - 1)])
  return jnp.where(valid, indices, 0).astype(jnp.int32), valid, is_positive
