from tokenwire.v1 import generation_pb2 as pb

from ..helpers import metric_value, wait_for


async def test_generate_streams(stub):
    req = pb.GenerateRequest(
        prompt="hi", stopping=pb.StoppingOptions(max_tokens=5, ignore_eos=True)
    )
    msgs = [m async for m in stub.Generate(req)]
    assert sum(len(m.token_ids) for m in msgs) == 5


def test_subprocess_server(sim_server):
    wait_for(
        lambda: metric_value(sim_server.metrics_url, "tokenwire_engine_requests_in_flight") == 0
    )
