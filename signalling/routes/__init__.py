"""One router module per resource; `signalling.app.ROUTE_MODULES` lists the mounted ones."""
