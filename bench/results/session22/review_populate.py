# Black-box review script (twenty-second session): 3,000 agents in tenant "big" (tools t0..t49 and "common").
from review_harness import *
t0=time.time(); n=0
for i in range(3000):
    try:
        A.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(name=f'agent-{i:05d}', role='r', goal='g', tools=[f't{i%50}', 'common'])), metadata=[('authorization','Bearer '+tok('big'))], timeout=10); n+=1
    except grpc.RpcError as e: print(e.code(), e.details()); break
print(n, time.time()-t0)
