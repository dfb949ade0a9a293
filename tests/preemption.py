"""A data iterator that fails like a preempted job, for resume tests."""


class Preempted(Exception):
  pass


class PreemptedIterator:
  """Yields `stop_after` batches of the real iterator, then raises Preempted; its state
  is the real iterator's, so checkpoints hold the true position."""

  def __init__(self, inner, stop_after):
    self.inner, self.left = inner, stop_after

  def __next__(self):
    if not self.left:
      raise Preempted
    self.left -= 1
    return next(self.inner)

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def preempt_after(make_iterator, stop_after):
  """`make_iterator` wrapped so that the iterators it makes stop after `stop_after` batches."""
  return lambda *args, **kwargs: PreemptedIterator(make_iterator(*args, **kwargs), stop_after)
