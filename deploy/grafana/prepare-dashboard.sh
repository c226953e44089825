#!/bin/sh
# Usage: prepare-dashboard.sh IN.json OUT.json DATASOURCE_UID
#
# ballast.json is an export with a `${DS_PROMETHEUS}` input, which Grafana fills in only in its
# "Import dashboard" dialog; file provisioning leaves the placeholder and every panel reports
# "datasource not found" (grafana/grafana#10786). This writes a copy whose panels point at the
# provisioned datasource's uid instead. POSIX sh and sed only (it runs in busybox).
set -eu
in=$1
out=$2
uid=$3
case $uid in
  *[!A-Za-z0-9_-]* | '') echo "prepare-dashboard.sh: bad datasource uid: $uid" >&2; exit 2 ;;
esac
sed "s/\${DS_PROMETHEUS}/$uid/g" "$in" > "$out.tmp"
mv "$out.tmp" "$out"
