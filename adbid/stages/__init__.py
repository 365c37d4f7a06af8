"""What runs: lookup, retrieval, scoring and decision, strung together by the pipeline.

The stage names are declared here, once: the pipeline reports its time under
them, the flow wing's cost model and the metrics key on them.
"""

QUEUE = "queue"  # waiting for a native thread
DECODE = "decode"  # request bytes -> columns (the edge)
LOOKUP = "lookup"  # user and context embeddings, vocabularies
RETRIEVAL = "retrieval"  # FAISS top-K
SCORING = "scoring"  # onnxruntime P(intent)
DECISION = "decision"  # the compiled decision loop, reservations journalled
LEDGER = "ledger"  # what is left of the ledger's write after encoding overlapped it
ENCODE = "encode"  # decisions -> answer (the edge)
RESUME = "resume"  # the event loop's lag in taking a finished thread's result back
TOTAL = "total"  # arrival to answer

STAGES = (QUEUE, DECODE, LOOKUP, RETRIEVAL, SCORING, DECISION, LEDGER, ENCODE, RESUME, TOTAL)
# What must still fit after the native stages: the decision, the ledger, the answer, and
# the event loop's lag twice (from a thread's result, and from the ledger's write).
TAIL = (DECISION, LEDGER, ENCODE, RESUME, RESUME)
# Every stage of a batch, in order (the cost of a batch before any whole batch was timed).
ALL = (DECODE, LOOKUP, RETRIEVAL, SCORING, *TAIL)
