#!/usr/bin/env bash
# Install the real servers the integration tests run against (Debian packages):
# Orthanc + DICOMweb (primary, secondary PACS), dcmtk and dicom3tools (validity checks),
# PostgreSQL (ledger, Prefect DB), Tesseract (OCR for the pixel PHI policy), Chromium and
# its driver (the test that uses the Prefect UI's run form as a user does).
# Does nothing when they are present; needs root or sudo when they are not.
set -euo pipefail

need=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -x /usr/bin/dcmdump ] || need+=(dcmtk)
[ -x /usr/bin/dciodvfy ] || need+=(dicom3tools)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/tesseract ] || need+=(tesseract-ocr)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
((${#need[@]})) || exit 0

echo "Installing system packages: ${need[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "Not root and no sudo: install ${need[*]} yourself; integration tests will skip." >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# Debian starts services on install where it can; the tests start their own instances.
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
