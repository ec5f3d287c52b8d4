"""`python -m meadow_devcloud start|stop|status|interrupt ...`."""

from meadow_devcloud.ec2.cli import devcloud

if __name__ == "__main__":
    devcloud()
