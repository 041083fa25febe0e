"""`discoveryctl serve` and `discoveryctl token mint`: the HTTP API and its bearer tokens."""

from __future__ import annotations

import typer

from discoveryctl.cli import options

group = typer.Typer(
    help="Bearer tokens for the HTTP API.\n\n\b\nExample: discoveryctl token mint --user seller-1",
    no_args_is_help=True,
)


def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Worker processes."),
) -> None:
    """Serve the HTTP API the web front end uses (uvicorn).

    Every route but /health needs a bearer JWT (HS256, JWT_SECRET) whose `sub` is the user;
    OpenAPI at /openapi.json. Listens on 127.0.0.1 unless told otherwise: put a TLS-terminating
    proxy in front of any other address.

    \b
    Example: discoveryctl serve --port 8080
    """
    import uvicorn

    from discoveryctl.cli.application import Application
    from discoveryctl.server.app import create_app

    app: Application = ctx.obj
    create_app(app.config)  # a bad setting or database stops here, in one line, not in a worker
    app.err.print(f"serving on http://{host}:{port} (Ctrl-C stops)", soft_wrap=True)
    uvicorn.run(
        "discoveryctl.server.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,  # the app logs each request itself, without query strings
        proxy_headers=False,
        timeout_graceful_shutdown=3,  # open event streams are cut, not waited for
    )


@group.command("mint")
def mint(
    ctx: typer.Context,
    user: str = typer.Option(
        ..., "--user", callback=options.user_id, help="The user the token speaks for (its sub)."
    ),
    ttl: str = typer.Option("1h", "--ttl", help="How long it is valid: 15m, 1h, 7d."),
) -> None:
    """Print a bearer token for the HTTP API, signed with JWT_SECRET.

    \b
    Example: curl -H "Authorization: Bearer $(discoveryctl token mint --user seller-1)" \\
        http://127.0.0.1:8080/api/v1/integrations/status
    """
    from discoveryctl.cli.application import Application
    from discoveryctl.server import tokens
    from discoveryctl.support import durations

    app: Application = ctx.obj
    lifetime = durations.parse(ttl, "--ttl")
    token = tokens.mint(
        app.config.jwt_secret(),
        user,
        lifetime,
        audience=app.config.get("JWT_AUDIENCE"),
        issuer=app.config.get("JWT_ISSUER"),
    )
    typer.echo(token)
