// The cross-process TpGroup (tp_tcp.cpp): ranks of one group in several processes, reducing over TCP.
#pragma once
#include <memory>
#include <string>

#include "tensor_parallel.h"

namespace dsg {

/** Joins the group at tp.distInitAddr (rank 0 listens there, the others connect); blocks until every rank is
 *  connected, the timeout, or an abort (LLM_ERR_TP_ABORTED naming the ranks still missing). A malformed address is
 *  LLM_ERR_CONFIG. */
std::shared_ptr<TpGroup> joinTcpGroup(const TensorParallel& tp);

/** Aborts this process's ranks of the cross-process group of that name: their sockets shut down, so peers in other
 *  processes see the connection close and abort too. */
void abortTcpGroup(const std::string& group, const std::string& reason);

}  // namespace dsg
