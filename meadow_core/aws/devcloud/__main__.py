"""`python -m meadow_core.aws.devcloud start|stop|status|interrupt ...`."""

from meadow_core.aws.devcloud.cli import devcloud

if __name__ == "__main__":
    devcloud()
