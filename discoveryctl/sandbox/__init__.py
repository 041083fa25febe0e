"""A local emulator of Seller Central consent, Login with Amazon, the SP-API and Stripe, served
over real HTTP on 127.0.0.1 for tests, demos and load tests (docs/behaviour.md §9).

    with run_in_thread(SandboxConfig(draft=False)) as sandbox:
        seller = sandbox.state.add_seller()
        sandbox.state.set_behaviour(seller.selling_partner_id, "flaky", times=2)
        ...  # point discoveryctl at sandbox.env()
"""

from discoveryctl.sandbox.config import SandboxConfig
from discoveryctl.sandbox.server import Sandbox, run_in_thread
from discoveryctl.sandbox.state import SandboxState

__all__ = ["Sandbox", "SandboxConfig", "SandboxState", "run_in_thread"]
