"""Repository rules that wire LibTorch and the nvidia-* wheels from weft's venv.

tools/setup.sh creates the venv and writes its site-packages directory to
`.deps/site-packages.path`. These rules link and load the libraries from that
absolute path, because the wheels' libraries find each
other through `$ORIGIN`-relative RUNPATHs, which break when the loader reaches
them through Bazel's `_solib` symlinks. So the libraries are linked and found
at their real location (`-L` and `-rpath`), and only the headers are copied in
as symlinks.
"""

def _site_packages(ctx):
    # Reading the file makes Bazel refetch these repositories when setup.sh
    # points the venv elsewhere.
    path = ctx.read(ctx.attr.site_packages_file).strip()
    if not path or not ctx.path(path + "/torch").exists:
        fail("weft: no torch in '%s': run `bash tools/setup.sh` first" % path)
    return path

def _torch_impl(ctx):
    torch = _site_packages(ctx) + "/torch"
    lib = torch + "/lib"
    ctx.symlink(torch + "/include", "include")
    has_cuda = ctx.path(lib + "/libtorch_cuda.so").exists
    cuda_libs = ["torch", "torch_cuda", "c10_cuda"] if has_cuda else []
    ctx.template("BUILD", ctx.attr.build_template, {
        "%{LIB_DIR}": lib,
        "%{CUDA_LIBS}": repr(["-l" + name for name in cuda_libs]),
    })

torch_wheel_repository = repository_rule(
    implementation = _torch_impl,
    attrs = {
        "build_template": attr.label(allow_single_file = True),
        "site_packages_file": attr.label(default = "//:.deps/site-packages.path", allow_single_file = True),
    },
    local = True,
)

def _cuda_impl(ctx):
    nvidia = _site_packages(ctx) + "/nvidia"
    cu = None
    for name in ["cu13", "cuda_runtime"]:
        if ctx.path(nvidia + "/" + name + "/include/cuda_runtime_api.h").exists:
            cu = nvidia + "/" + name
    nccl = nvidia + "/nccl"
    found = cu != None and ctx.path(nccl + "/include/nccl.h").exists
    if found:
        ctx.symlink(cu + "/include", "cuda_include")
        ctx.symlink(nccl + "/include", "nccl_include")
    # Both LibTorch's CUDA libraries and the CUDA/NCCL wheels: the plugin builds.
    found = found and ctx.path(_site_packages(ctx) + "/torch/lib/libtorch_cuda.so").exists
    ctx.file("defs.bzl", "HAS_CUDA = %s\n" % ("True" if found else "False"))
    ctx.template("BUILD", ctx.attr.build_template, {
        "%{FOUND}": "1" if found else "0",
        "%{CUDA_LIB_DIR}": (cu + "/lib") if found else "",
        "%{NCCL_LIB_DIR}": (nccl + "/lib") if found else "",
    })

cuda_wheels_repository = repository_rule(
    implementation = _cuda_impl,
    attrs = {
        "build_template": attr.label(allow_single_file = True),
        "site_packages_file": attr.label(default = "//:.deps/site-packages.path", allow_single_file = True),
    },
    local = True,
)
