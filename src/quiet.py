"""Keeping TensorFlow's C++ noise off stderr while letting everything else through, without importing
TensorFlow: stderr (fd 2) passes through a filter process for the length of a `with` block."""
import contextlib
import os
import subprocess
import sys

# Lines TensorFlow's C++ core writes on every start, healthy or not, before its log level applies.
TF_NOISE = (
    r'^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$',
    r'cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions',
    r'^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$',
    r'oneDNN custom operations are on\. You may see slightly different numerical results',
    r'cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.$',
    r'Unable to register (cuDNN|cuFFT|cuBLAS) factory: Attempting to register factory for plugin',
    r'computation placer already registered\. Please check linkage',
    r'TF-TRT Warning: Could not find TensorRT$',
    r'successful NUMA node read from SysFS had negative value',
)
# On a machine without CUDA drivers (the line above), device discovery then also logs this error.
TF_NO_DRIVER_NOISE = r'failed call to cuInit: '

# Loading a step from the compile cache (files.use_compile_cache) logs these errors, on a healthy entry:
# - TensorFlow first tries to read the entry as a text proto, then reads it as the binary it is;
# - XLA's AOT loader compares the entry's target features with the host's and flags the tuning attributes
#   that LLVM adds for some CPUs (+prefer-no-gather, +prefer-no-scatter on Zen 4/5 and Sapphire Rapids), which
#   no host lists; newer XLA skips the prefer- and fast- prefixes itself.  A line flagging an instruction
#   set passes: files.use_compile_cache removes such entries before TensorFlow can load one.
COMPILE_CACHE_NOISE = (
    r'text_format\.cc:\d+\] Error parsing text-format tensorflow\.XlaSerializedCacheEntry: ',
    r'cpu_aot_loader\.cc:\d+\] Loading XLA:CPU AOT result\. Target machine feature '
    r'\+(prefer|fast|slow|tuning)-[\w.-]+ is not +supported on the host machine\.',
)

# The filter process: copies its stdin to its stdout line by line, leaving out the noise.  A process of
# its own, so that it still passes on every line when TensorFlow kills ours (an abort in C++).
_FILTER = r'''
import os, re, sys
noise = re.compile("|".join(sys.argv[1:-1]).encode())
no_driver_noise = re.compile(sys.argv[-1].encode())
no_driver = False

def emit(line):
    global no_driver
    text = line.rstrip(b"\r\n")
    if noise.search(text):
        no_driver = no_driver or b"Could not find cuda drivers" in text
    elif not (no_driver and no_driver_noise.search(text)):
        while line:
            line = line[os.write(1, line):]

rest = b""
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    *lines, rest = (rest + chunk).split(b"\n")
    for line in lines:
        emit(line + b"\n")
if rest:
    emit(rest)
'''


def wanted():
    """Whether to filter: not where TF_CPP_MIN_LOG_LEVEL is 0 or 1 (asked for everything), nor on
    Windows, where fd 2 is not redirected."""
    return os.environ.get('TF_CPP_MIN_LOG_LEVEL', '').strip() not in ('0', '1') and os.name != 'nt'


@contextlib.contextmanager
def stderr_without(patterns, after_no_driver=None):
    """Within the block, lines written to fd 2 that match one of the regular expressions `patterns` are
    left out (and, once the no-driver line has been seen, those matching `after_no_driver`); every other
    line passes, also when the process is killed within the block: the filter is a process of its own."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:   # no stderr to filter
        yield
        return
    read_end, write_end = os.pipe()
    try:
        filter_process = subprocess.Popen(
            [sys.executable, '-I', '-S', '-c', _FILTER, *patterns, after_no_driver or '(?!)'],
            stdin=read_end, stdout=saved, stderr=saved)
    except OSError:   # no interpreter to start (an embedded Python): no filter
        filter_process = None
    os.close(read_end)
    if filter_process is not None:
        os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)   # closes our last copy of the pipe: the filter drains it and ends
        os.close(saved)
        if filter_process is not None:
            filter_process.wait()
