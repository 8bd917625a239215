#!/bin/sh
# usage: rss.sh -> prints VmRSS/threads/fds of both servers
for n in registry crypto; do p=$(cat /tmp/helperC/$n.pid); printf "%s pid=%s %s fds=%s\n" $n $p "$(grep -E 'VmRSS' /proc/$p/status | tr -s ' \t' ' ')" "$(ls /proc/$p/fd | wc -l)"; done
