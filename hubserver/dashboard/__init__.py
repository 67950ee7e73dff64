"""The live dashboard: an overview of every device type the user may view, and one page per device with live
charts and command forms. Plain Django views and templates; ``static/hubserver/dashboard.js`` keeps the pages
live over the realtime WebSocket (``/ws/hub/``, see the realtime protocol). Include at the site root:

    path("", include("hubserver.dashboard.urls"))
"""
