"""Compiles the engine's CUDA kernels (crates/engine/src/cuda_kernels.cu) the way the CUDA binary
compiles them at run time, with NVRTC and no options, then assembles the PTX with ptxas for each
compute capability, as the driver does when it loads the module. A kernel that would fail on a GPU
fails here, on the build machine. Prints the kernels and their register use.

    python3 scripts/check_cuda_kernels.py CUDA_LIB_DIR CUDA_BIN_DIR 90 [80 ...]

Run by scripts/build-cuda.sh with the PyPI toolkit's folders (nvidia/cu13/lib and bin)."""
import ctypes
import os
import re
import subprocess
import sys
import tempfile

lib_dir, bin_dir, caps = sys.argv[1], sys.argv[2], sys.argv[3:]
src_path = os.path.join(os.path.dirname(__file__), "..", "crates", "engine", "src", "cuda_kernels.cu")
# libnvrtc opens its builtins by name at compile time; loaded first, they are found without
# LD_LIBRARY_PATH (the binary's `run` script puts this folder on it).
for builtins in sorted(f for f in os.listdir(lib_dir) if f.startswith("libnvrtc-builtins.so")):
    ctypes.CDLL(os.path.join(lib_dir, builtins), mode=ctypes.RTLD_GLOBAL)
nvrtc = ctypes.CDLL(os.path.join(lib_dir, "libnvrtc.so.13"))
prog = ctypes.c_void_p()
assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), open(src_path, "rb").read(), None, 0, None, None) == 0
rc = nvrtc.nvrtcCompileProgram(prog, 0, None)
size = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetProgramLog(prog, log)
if rc != 0:
    sys.exit(f"check_cuda_kernels: NVRTC cannot compile {src_path}:\n{log.value.decode()}")
nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
ptx = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetPTX(prog, ptx)
with tempfile.TemporaryDirectory() as tmp:
    ptx_path = os.path.join(tmp, "kernels.ptx")
    open(ptx_path, "w").write(ptx.value.decode())
    for cap in caps:
        out = subprocess.run([os.path.join(bin_dir, "ptxas"), f"-arch=sm_{cap}", "-v", ptx_path, "-o",
                              os.path.join(tmp, "kernels.cubin")], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"check_cuda_kernels: ptxas -arch=sm_{cap} rejects the NVRTC output:\n{out.stderr}")
        kernels = re.findall(r"entry function '(\w+)'", out.stderr)
        registers = sorted(set(re.findall(r"Used (\d+) registers", out.stderr)), key=int)
        print(f"sm_{cap}: {len(kernels)} kernels assemble ({', '.join(sorted(kernels))}); "
              f"{'/'.join(registers)} registers")
