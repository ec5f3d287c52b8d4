"""The external script of the Pipes example: needs only ``dagster-pipes`` on the host.

It reads its context from the environment (injected by ``PipesMeadowClient``) and
reports through stdout, which Meadow relays to the orchestrating process.
"""

import os

from dagster_pipes import open_dagster_pipes


def main() -> None:
    with open_dagster_pipes() as pipes:
        rows = int(pipes.get_extra("rows"))
        pipes.log.info(f"crunching {rows} rows in pid {os.getpid()}")
        print("a plain print from the script")
        total = sum(range(rows))
        pipes.report_asset_materialization(metadata={"total": total, "rows": rows})
        pipes.report_asset_check(check_name="total_is_positive", passed=total > 0)


if __name__ == "__main__":
    main()
