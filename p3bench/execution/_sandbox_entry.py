"""Entry point of every sandboxed program, executed inside the sandbox before anything untrusted.

Standalone, standard library only, and small (it is compiled at every run): the sandbox runs it as
``python -s -B -c SOURCE SPEC KIND ARGS...``. ``SPEC`` holds ``key=value`` items separated by ``;``:

- ``cgroup_fd``: a descriptor of the run's cgroup's ``tasks`` (v1) or ``cgroup.procs`` (v2), opened by the
  host; writing ``0`` moves this (single-threaded) process into it, so every process the program starts
  is counted there;
- ``limits``: ``NAME:soft:hard`` items separated by ``,``, set with ``setrlimit(RLIMIT_NAME, ...)``;
- ``uid``: the run's unprivileged uid, taken (without groups) where the sandbox started this as root;
- ``frames``: how much of the recursion limit one module-level ``exec`` takes (measured when the level is
  detected); the limit is raised by that much, so the program can recurse as deep as it could alone;
- ``init``: ``1`` to stay in front of the program as its init (the ``uid`` level, which has no PID
  namespace): a child subreaper that reaps every orphan at once, and when the program ends, kills what it
  left (every other process of the run's uid), reaps it, and ends the same way as the program.

Then ``KIND`` ``code`` runs Python source ``ARGS[0]`` in this interpreter as ``__main__``, as
``python -c ARGS[0]`` would (one module-level ``exec`` deeper, which the raised limit makes up for);
``bytecode`` runs the code object marshalled in hex in ``ARGS[0]`` the same way; ``exec`` replaces this
process with ``ARGS``. The entry point's own names are removed from ``__main__`` first. The sandbox runs
this file from source, or compiled (see ``BOOTSTRAP`` in :mod:`p3bench.execution.launch`).
"""


def _enter():
    import os
    import sys

    init = globals().pop("_init")
    for name in ("_enter", "marshal", "sys"):  # the last two: from the bootstrap that loaded this
        globals().pop(name, None)
    spec = dict(item.split("=", 1) for item in sys.argv[1].split(";") if item)
    kind, args = sys.argv[2], sys.argv[3:]
    if "cgroup_fd" in spec:
        fd = int(spec["cgroup_fd"])
        os.write(fd, b"0")
        os.close(fd)
    if spec.get("limits"):
        import resource

        for item in spec["limits"].split(","):
            name, soft, hard = item.split(":")
            resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))
    if "uid" in spec:
        uid = int(spec["uid"])
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if spec.get("init") == "1":
        init(os)
    if kind == "exec":
        os.execvp(args[0], args)
    sys.argv[:] = ["-c"]
    sys.setrecursionlimit(sys.getrecursionlimit() + int(spec.get("frames", 0)))
    if kind == "bytecode":
        import marshal

        return marshal.loads(bytes.fromhex(args[0]))
    return args[0]


def _init(os):
    import contextlib
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans become our children
    child = os.fork()
    if not child:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    status = 0
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            break
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGKILL)  # as the run's uid: only what the program left
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    if os.WIFSIGNALED(status):  # end by the same signal (no handler: SIGKILL cannot have one)
        with contextlib.suppress(OSError, ValueError):
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


exec(_enter())
