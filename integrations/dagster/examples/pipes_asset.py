"""A Pipes asset: the step stays in the orchestrating process; the script runs on Meadow.

dagster dev -f integrations/dagster/examples/pipes_asset.py
"""

import sys
from pathlib import Path

from dagster import AssetCheckSpec, AssetExecutionContext, Definitions, MaterializeResult, asset
from meadow_dagster import PipesMeadowClient

SCRIPT = Path(__file__).with_name("pipes_script.py")


@asset(check_specs=[AssetCheckSpec("total_is_positive", asset="crunched")])
def crunched(context: AssetExecutionContext, pipes: PipesMeadowClient) -> MaterializeResult:
    """Runs pipes_script.py on a Meadow host; its reports become this asset's results."""
    return pipes.run(
        context=context,
        command=[sys.executable, str(SCRIPT)],
        extras={"rows": 1000},
    ).get_materialize_result()


defs = Definitions(assets=[crunched], resources={"pipes": PipesMeadowClient()})
