import subprocess
import sys

METHOD_MODULES = ["ncawss", "ncawss.data", "ncawss.layouts", "ncawss.synthetic", "ncawss.nca",
                  "ncawss.segment", "ncawss.config", "ncawss.loop", "ncawss.train", "ncawss.evaluation",
                  "ncawss.baselines", "ncawss.space", "ncawss.predict"]


def test_method_modules_import_neither_ray_nor_mlflow():
    code = ("import sys, importlib\n"
            f"for m in {METHOD_MODULES!r}: importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'mlflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_platform_folder_does_not_shadow_the_standard_platform_module():
    code = "import ncawss, platform, sysconfig; print(platform.__file__.startswith(sysconfig.get_paths()['stdlib']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
