"""The commands: each turns parsed arguments into a run, a tracking pass, a webhook receiver, a
report or a change to the account's lists, and returns the exit code. Long commands stop
through the one signal path (:func:`bulk_mms.signals.stopping_on_signals`).

- :mod:`~bulk_mms.commands.common`: settings, the API key, the client, files not to overwrite
- :mod:`~bulk_mms.commands.sandbox`: the fake API a ``--sandbox`` command runs against
- :mod:`~bulk_mms.commands.run`: ``run``
- :mod:`~bulk_mms.commands.delivery`: ``track``, ``webhooks``
- :mod:`~bulk_mms.commands.report`: ``report``, ``status``
- :mod:`~bulk_mms.commands.admin`: ``db``, ``ledger``, ``suppress``, ``optouts``
"""

from bulk_mms.commands.admin import cmd_db, cmd_ledger, cmd_optouts, cmd_suppress
from bulk_mms.commands.common import CONFIG_HELP, LEDGER_URL_ENV, find_config, refuse_overwrites
from bulk_mms.commands.delivery import cmd_track, cmd_webhooks
from bulk_mms.commands.report import cmd_report
from bulk_mms.commands.run import cmd_run
from bulk_mms.commands.sandbox import SANDBOX_WEBHOOKS_ENV

__all__ = [
    "CONFIG_HELP",
    "LEDGER_URL_ENV",
    "SANDBOX_WEBHOOKS_ENV",
    "cmd_db",
    "cmd_ledger",
    "cmd_optouts",
    "cmd_report",
    "cmd_run",
    "cmd_suppress",
    "cmd_track",
    "cmd_webhooks",
    "find_config",
    "refuse_overwrites",
]
