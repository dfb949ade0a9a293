"""Claims on sweep runs, so that several processes or machines share one sweep's workdir
without training a run twice.

Before a process trains WORKDIR/NAME it claims it: it creates NAME/claims/EPOCH.json
(host, pid, start time, a heartbeat time and a random token) with files.create_exclusive,
which of several racing processes lets exactly one succeed, locally and on gs://. While
the run trains, a background thread rewrites the heartbeat every `heartbeat_every(timeout)`
seconds; the claim file is removed when the run ends (finished, failed or interrupted).

The newest epoch is the claim in force. A claim is stale when its heartbeat is older than
the timeout (by the reader's clock, so hosts' clocks must agree to well within it), or
when it was made on this host by a process that no longer exists. A stale claim of epoch
k is taken over by creating epoch k + 1, again only-if-absent: of several processes that
find the same stale claim one wins and the others see a live claim. Nothing is deleted to
take over (the stale file is removed afterwards, as tidying), so no process can remove a
claim it did not see. A holder whose claim was taken over (it hung for longer than the
timeout) notices at its next heartbeat and says so: the timeout must exceed any pause of
a live process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

from bitjax import files

CLAIMS_DIR = "claims"
DEFAULT_TIMEOUT = 600.0  # seconds without a heartbeat before a claim is taken over


def heartbeat_every(timeout: float) -> float:
  """Seconds between heartbeats (and between looks at a run another process holds): ten
  chances within the timeout, at most a minute apart."""
  return min(60.0, timeout / 10)


@dataclasses.dataclass
class Claim:
  """One claim file's content and where it lies."""

  path: str
  epoch: int
  host: str
  pid: int
  started: float
  heartbeat: float
  token: str

  @property
  def owner(self) -> str:
    return f"{self.host}:{self.pid}"

  def age(self) -> float:
    """Seconds since the last heartbeat."""
    return max(0.0, time.time() - self.heartbeat)

  def stale_reason(self, timeout: float) -> str | None:
    """Why the claim may be taken over, or None while it is live."""
    if self.host == socket.gethostname() and not _pid_alive(self.pid):
      return f"process {self.owner} is gone"
    if self.age() > timeout:
      return f"heartbeat {self.age():.0f} s ago, over the timeout of {timeout:g} s"
    return None

  def text(self) -> str:
    return json.dumps({key: getattr(self, key) for key in
                       ("epoch", "host", "pid", "started", "heartbeat", "token")}) + "\n"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def _epochs(run_dir: str) -> list[int]:
  try:
    names = files.listdir(os.path.join(run_dir, CLAIMS_DIR))
  except FileNotFoundError:  # no claim yet, or (in an object store) the last one just removed
    return []
  return sorted(int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit())


def _path(run_dir: str, epoch: int) -> str:
  return os.path.join(run_dir, CLAIMS_DIR, f"{epoch}.json")


def current(run_dir: str) -> Claim | None:
  """The claim in force on the run in `run_dir` (the newest epoch), or None."""
  while True:
    epochs = _epochs(run_dir)
    if not epochs:
      return None
    path = _path(run_dir, epochs[-1])
    try:
      text = files.read_text(path)
    except FileNotFoundError:  # released between the listing and the read: look again
      continue
    try:
      record = json.loads(text)
      return Claim(path, **{key: record[key] for key in
                            ("epoch", "host", "pid", "started", "heartbeat", "token")})
    except (ValueError, KeyError, TypeError):
      raise files.WorkdirError(f"claim file {path!r} is not a bitjax claim; remove it if no "
                               "process trains that run") from None


def acquire(run_dir: str, timeout: float, log: Callable[[str], None]) -> HeldClaim | Claim:
  """Claim the run in `run_dir`: a HeldClaim (heartbeat running) if this process now holds
  it, else the live Claim of the process that does. A stale claim is taken over, said
  through `log`."""
  files.makedirs(os.path.join(run_dir, CLAIMS_DIR))
  while True:
    found = current(run_dir)
    reason = found and found.stale_reason(timeout)
    if found and not reason:
      return found
    now = time.time()
    mine = Claim(_path(run_dir, found.epoch + 1 if found else 0), found.epoch + 1 if found else 0,
                 socket.gethostname(), os.getpid(), now, now, secrets.token_hex(8))
    if files.create_exclusive(mine.path, mine.text()):
      if found:
        log(f"took over the claim of {found.owner} ({reason})")
        files.remove(found.path)
      return HeldClaim(run_dir, mine, timeout, log)
    # Another process created that epoch first: look at its claim.


class HeldClaim:
  """A claim this process holds: a daemon thread rewrites its heartbeat until `release`."""

  def __init__(self, run_dir: str, claim: Claim, timeout: float, log: Callable[[str], None]):
    self.run_dir, self.claim, self.log = run_dir, claim, log
    self.lost = False
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_every(timeout),),
                                    name=f"claim heartbeat {run_dir}", daemon=True)
    self._thread.start()

  def _beat(self, every: float) -> None:
    while not self._stop.wait(every):
      try:
        found = current(self.run_dir)
        if found is None or found.token != self.claim.token:
          self.lost = True
          self.log(f"{self.run_dir}: this process's claim was taken over by "
                   f"{found.owner if found else 'nobody (removed)'}; its heartbeat stalled "
                   "for longer than the claim timeout")
          return
        self.claim.heartbeat = time.time()
        files.write_atomic(self.claim.path, self.claim.text())
      except OSError as e:  # a network error: the next beat tries again
        self.log(f"{self.run_dir}: claim heartbeat failed ({e}); retrying")

  def release(self) -> None:
    """Stop the heartbeat and remove the claim file (unless another process took it over)."""
    self._stop.set()
    self._thread.join()
    if not self.lost:
      files.remove(self.claim.path)
