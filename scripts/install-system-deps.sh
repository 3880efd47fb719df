#!/usr/bin/env bash
# Installs the Debian packages the tests need, only if they are missing.
#   mricron-data: Colin27 (ch2 / ch2bet) for the skull-stripping check
#   dicom3tools:  dciodvfy, the DICOM object validator every written object is checked with
#   orthanc, orthanc-dicomweb: the site and destination-PACS DICOM servers the tests start themselves
#   postgresql:   the distributed runtime's workflow state store (the tests start their own server)
#   openjdk-17-jre-headless, maven: run the Kafka broker and fetch its jars from Maven Central (scripts/kafka.sh)
#   prometheus, prometheus-alertmanager: promtool/amtool check the alert rules and routing; the stack and the
#                 monitoring tests start their own Prometheus and Alertmanager
#   chromium, chromium-driver: the headless browser (and its WebDriver) the console's browser tests drive
#   libpython3.11: the shared libpython that Triton's Python-backend stub (PyPI nvidia-pytriton) embeds
set -euo pipefail
need=()
[ -f /usr/share/mricron/templates/ch2bet.nii.gz ] || need+=(mricron-data)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
[ -x /usr/bin/prometheus ] && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/bin/prometheus-alertmanager ] && command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
[ -f /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 ] || need+=(libpython3.11)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -q
# Where systemd runs, the packages also start system services: unused, the tests start their own on free ports.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
