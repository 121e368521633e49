"""The web console of the admin listener: see and steer every namespace, worker, route and
request in a browser (``/console/``). Server-rendered pages (Jinja2, autoescaped), one small
script for the live charts, every asset served by the dispatcher itself.

Example::

    async with Console(api, auth, store, replicas, settings) as console:
        listener = Listener(AppHandler(console), admin_limits)
"""

from dispatcher.console.app import Console, is_console_path

__all__ = ["Console", "is_console_path"]
