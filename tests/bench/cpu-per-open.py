#!/usr/bin/env python3
# CPU time per open by category from a system-wide `perf record -a -F 999` taken
# while load-bench drove `rate` opens/s for `seconds` (see profile-opens.sh).
# usage: cpu-per-open.py perf.data rate seconds
import re,collections,sys,subprocess
data,rate=sys.argv[1],float(sys.argv[2])
out=subprocess.run(['perf','report','-i',data,'--sort','pid,dso,sym','--no-children','--stdio','-g','none','-F','sample,pid,dso,sym'],capture_output=True,text=True).stdout
cat=collections.Counter(); total=0
for line in out.splitlines():
    m=re.match(r'\s*(\d+)\s+(\d+):(\S+)\s+(\S+)\s+\[(.)\]\s+(.*)',line)
    if not m: continue
    n,comm,dso,sym=int(m[1]),m[3],m[4],m[6].strip()
    total+=n
    if comm=='swapper': c='idle'
    elif comm.startswith('load-bench') or dso=='load-bench': c='load generator'
    elif comm=='postgres': c='PostgreSQL server'
    elif dso=='[kernel.kallsyms]':
        if any(k in sym for k in ('spin_unlock','finish_task_switch','irqentry_exit','futex','schedule','try_to_wake','__switch_to','pick_next','enqueue','dequeue','update_curr','select_task')): c='kernel: thread wake-ups and switches'
        elif any(k in sym for k in ('tcp','skb','ip_','copy_','sock','net_','__dev','loopback','_copy_to_iter','_copy_from_iter','handle_softirqs','iowrite16')): c='kernel: sockets and I/O'
        else: c='kernel: other'
    elif re.search(r'malloc|free|mi_|_mi_|realloc|calloc|unlink_chunk|alloc::|consolidate',sym): c='allocation'
    elif re.search(r'async_graphql|pest|stacker',sym): c='GraphQL parse/validate/execute'
    elif re.search(r'sqlite3|pcache',sym): c='SQLite engine'
    elif re.search(r'sqlx|sea_orm|sea_query|flume',sym): c='sqlx / sea-orm client'
    elif re.search(r'hyper|axum|tower|http',sym): c='HTTP'
    elif comm.startswith('tokio') or comm.startswith('sqlx'): c='daypass: other (tokio, std, domain)'
    else: c='other: '+comm
    cat[c]+=n
freq=999
secs=float(sys.argv[3])
opens=rate*secs
busy=total-cat['idle']
print(f"{data}: {total} samples, {rate:.0f} opens/s, CPU per open {busy/freq/opens*1e6:.0f} us")
for c,n in cat.most_common():
    if c=='idle': continue
    print(f"  {n/freq/opens*1e6:6.0f} us  {100*n/busy:5.1f}%  {c}")
