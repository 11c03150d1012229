"""Where the project's data files live."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
CONF_DIR = REPO_DIR / "conf"
