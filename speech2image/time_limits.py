"""A call to an Executor that runs out of time is answered once, the same way on every protocol.

jina's gateway gives each call to an Executor ``timeout_send`` (``--timeout-send-ms``) and, when
it passes, sends the call again (``retries``): a job that is merely long is started twice, and
then fails with an error that each of jina's servers words its own way (gRPC "Deadline
Exceeded|Gateway: Connection with deployment ... at address(es) {'127.0.0.1:...'}", HTTP a
plain-text 500, WebSocket a close 1011 naming the address).

``answer_timeouts_once`` changes the gateway's connection pool: a call that ran out of time is
not tried again (failures to connect still are), and it is answered as an Executor's error
(``TIMEOUT_ERROR_NAME``, saying which limit passed and how long it is), which the gateway turns
into gRPC DEADLINE_EXCEEDED, HTTP 504 and a WebSocket error response like its own request
timeout (speech2image/request_policy.py). No address reaches the client.
"""

import grpc

TIMEOUT_ERROR_NAME = 'ExecutorTimeout'


def timed_out_message(deployment: str, seconds: float) -> str:
    return (
        f'no answer from the {deployment} step within {seconds:g} s (--timeout-send-ms): '
        'the request is too long for this limit, or the service is overloaded; retry later'
    )


def ran_out_of_time(outcome) -> bool:
    """Whether a call's outcome (a result, or the error jina returns) is a passed deadline."""
    code = getattr(outcome, 'code', None)
    return (
        isinstance(outcome, Exception)
        and callable(code)
        and code() == grpc.StatusCode.DEADLINE_EXCEEDED
    )


def timeout_response(request, deployment: str, seconds: float):
    """``request`` answered with the timeout error, as jina answers an Executor's exception."""
    from jina.proto import jina_pb2

    message = timed_out_message(deployment, seconds)
    status = request.header.status
    status.code = jina_pb2.StatusProto.ERROR
    status.description = f'{TIMEOUT_ERROR_NAME}({message!r})'  # as jina's worker writes it
    status.exception.name = TIMEOUT_ERROR_NAME
    del status.exception.args[:]
    status.exception.args.append(message)
    return request


def answer_timeouts_once(pool) -> None:
    """Make jina's ``GrpcConnectionPool`` ``pool`` (the gateway's) send no call again after it
    ran out of time, and answer it with ``timeout_response``."""
    handle_error = pool._handle_aiorpcerror
    send_requests_once = pool.send_requests_once

    async def no_retry_after_timeout(*args, error, **kwargs):
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            kwargs['retry_i'] = kwargs.get('total_num_tries', 1) - 1  # as if retries were spent
        return await handle_error(*args, error=error, **kwargs)

    async def answered(task, requests, deployment: str, timeout):
        outcome = await task
        if ran_out_of_time(outcome):
            # 'is-error' stops the request at this Executor, as jina does for its errors.
            return timeout_response(requests[0], deployment, timeout or 0), {'is-error': 'true'}
        return outcome

    def send_answering_timeouts(requests, deployment: str, *args, timeout=None, **kwargs):
        task = send_requests_once(requests, deployment, *args, timeout=timeout, **kwargs)
        if task is None:
            return None
        return answered(task, requests, deployment, timeout)

    pool._handle_aiorpcerror = no_retry_after_timeout
    pool.send_requests_once = send_answering_timeouts
