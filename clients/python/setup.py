"""Build hooks: generate the gRPC stubs from the repository's proto/ with grpcio-tools.

The proto is read from ../../proto when building inside the repository (pip install
./clients/python) and from ./proto inside an sdist, into which `sdist` copies it. The generated
modules land in the wheel as threadwarden_client/_generated/; they are never checked in.
"""

import pathlib
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = pathlib.Path(__file__).resolve().parent
PROTO = pathlib.Path("threadwarden/v1/moderation.proto")


def proto_root() -> pathlib.Path:
    for root in (HERE.parent.parent / "proto", HERE / "proto"):
        if (root / PROTO).is_file():
            return root
    raise SystemExit(f"threadwarden-client: {PROTO} not found in ../../proto or ./proto")


def generate(out: pathlib.Path) -> None:
    from grpc_tools import protoc

    root = proto_root()
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{root}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", str(root / PROTO)]
        if protoc.main(args) != 0:
            raise SystemExit("threadwarden-client: protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        gen = pathlib.Path(tmp) / PROTO.parent
        for name in ("moderation_pb2.py", "moderation_pb2.pyi", "moderation_pb2_grpc.py"):
            text = (gen / name).read_text()
            # grpcio-tools imports the messages by proto path (threadwarden.v1); make it relative
            # so that the stubs live inside this package. The descriptor keeps its proto path.
            text = text.replace("from threadwarden.v1 import moderation_pb2", "from . import moderation_pb2")
            (out / name).write_text(text)
        (out / "__init__.py").write_text(f'"""Generated from {PROTO} by grpcio-tools at build time."""\n')


class BuildPy(build_py):
    def run(self):
        super().run()
        generate(pathlib.Path(self.build_lib) / "threadwarden_client" / "_generated")


class Sdist(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        shutil.copytree(proto_root(), pathlib.Path(base_dir) / "proto", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
