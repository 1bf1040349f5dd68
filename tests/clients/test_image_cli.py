"""Image service with the unmodified `openstack` CLI against a spawned `tessera all-in-one`."""

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse

from conftest import TESSERA as TESSERA_BIN, Cloud, start_cloud, stop


def sha(path):
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_qcow2(path, size="64M"):
    subprocess.run(["qemu-img", "create", "-f", "qcow2", path, size], check=True, capture_output=True)


def test_image_lifecycle_with_the_cli(cloud, tmp_path):
    src = tmp_path / "disk.qcow2"
    make_qcow2(str(src))
    img = cloud.os("image", "create", "--disk-format", "qcow2", "--container-format", "bare", "--file", str(src), "cli-image", "-f", "json")
    assert img["status"] == "active" and img["disk_format"] == "qcow2"
    assert img["size"] == os.path.getsize(src)
    assert img["virtual_size"] == 64 * 1024 * 1024
    listed = cloud.os("image", "list", "-f", "json")
    assert any(i["ID"] == img["id"] for i in listed)
    shown = cloud.os("image", "show", "cli-image", "-f", "json")
    assert shown["id"] == img["id"] and shown["properties"]["os_hash_algo"] == "sha512"
    assert shown["properties"]["os_hash_value"] == sha(src)
    assert shown["checksum"] == hashlib.md5(src.read_bytes()).hexdigest()

    cloud.os("image", "set", "--property", "hw_disk_bus=virtio", "--tag", "gold", "--min-ram", "256", "cli-image")
    shown = cloud.os("image", "show", "cli-image", "-f", "json")
    assert shown["properties"]["hw_disk_bus"] == "virtio" and shown["min_ram"] == 256 and "gold" in shown["tags"]
    cloud.os("image", "unset", "--property", "hw_disk_bus", "cli-image")
    assert "hw_disk_bus" not in cloud.os("image", "show", "cli-image", "-f", "json")["properties"]

    out = tmp_path / "out.qcow2"
    cloud.os("image", "save", "--file", str(out), "cli-image")
    assert sha(out) == sha(src)

    # A large raw image round-trips byte for byte.
    raw = tmp_path / "big.raw"
    with open(raw, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(1 << 20))
    big = cloud.os("image", "create", "--file", str(raw), "big-raw", "-f", "json")
    assert big["size"] == 24 << 20 and big["disk_format"] == "raw" and big["virtual_size"] == 24 << 20
    out2 = tmp_path / "big.out"
    cloud.os("image", "save", "--file", str(out2), big["id"])
    assert sha(out2) == sha(raw)

    cloud.os("image", "set", "--protected", big["id"])
    r = cloud.os("image", "delete", big["id"], check=False)
    assert r.returncode != 0
    cloud.os("image", "set", "--unprotected", big["id"])
    cloud.os("image", "delete", big["id"])
    cloud.os("image", "delete", "cli-image")
    assert cloud.os("image", "show", img["id"], check=False).returncode != 0


def wait_image(cloud, name_or_id, status, tries=200):
    for _ in range(tries):
        shown = cloud.os("image", "show", name_or_id, "-f", "json")
        if shown["status"] == status:
            return shown
        time.sleep(0.1)
    raise AssertionError(f"image {name_or_id} never reached {status}: {shown}")


def test_glance_direct_import_with_the_cli(cloud, tmp_path):
    src = tmp_path / "imp.qcow2"
    make_qcow2(str(src), "32M")
    # One step: openstacksdk creates, stages and imports.
    img = cloud.os("image", "create", "--import", "--disk-format", "qcow2", "--container-format", "bare",
                   "--file", str(src), "imported", "-f", "json")
    shown = wait_image(cloud, img["id"], "active")
    assert shown["virtual_size"] == 32 << 20 and shown["properties"]["os_hash_value"] == sha(src)
    out = tmp_path / "imp.out"
    cloud.os("image", "save", "--file", str(out), img["id"])
    assert sha(out) == sha(src)
    # Step by step: image stage, then image import.
    # (`image create` without --file reads stdin when it is not a terminal, so the record is made over REST.)
    token, u = token_and_image_url(cloud)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request("POST", "/v2/images", json.dumps({"name": "staged", "disk_format": "qcow2", "container_format": "bare"}),
              headers={"X-Auth-Token": token, "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 201
    img2 = json.loads(r.read())
    c.close()
    cloud.os("image", "stage", "--file", str(src), img2["id"])
    assert cloud.os("image", "show", img2["id"], "-f", "json")["status"] == "uploading"
    cloud.os("image", "import", "--method", "glance-direct", img2["id"])
    wait_image(cloud, img2["id"], "active")
    r = cloud.os("image", "import", "--method", "web-download", "--uri", "http://127.0.0.1:9/x", img2["id"], check=False)
    assert r.returncode != 0 and "not supported" in r.stderr
    for i in (img["id"], img2["id"]):
        cloud.os("image", "delete", i)


def test_private_images_and_sharing(cloud, tmp_path):
    src = tmp_path / "d.raw"
    src.write_bytes(os.urandom(4096))
    for p, u in (("img-a", "ann"), ("img-b", "ben")):
        cloud.os("project", "create", p)
        cloud.os("user", "create", "--password", "pw", u)
        cloud.os("role", "add", "--project", p, "--user", u, "member")
    ann = cloud.user_env("ann", "pw", "img-a")
    ben = cloud.user_env("ben", "pw", "img-b")
    img = cloud.os("image", "create", "--private", "--file", str(src), "ann-private", "-f", "json", env=ann)
    assert img["visibility"] == "private"
    # Invisible to the other project: not listed, 404 on show.
    assert img["id"] not in [i["ID"] for i in cloud.os("image", "list", "-f", "json", env=ben)]
    r = cloud.os("image", "show", img["id"], env=ben, check=False)
    assert r.returncode != 0 and "404" in (r.stderr + r.stdout) or "No Image found" in (r.stderr + r.stdout), r.stderr
    # A member cannot publish.
    r = cloud.os("image", "set", "--public", img["id"], env=ann, check=False)
    assert r.returncode != 0 and "403" in r.stderr, r.stderr
    # Sharing: the owner adds the other project; once accepted it is listed there.
    cloud.os("image", "set", "--shared", img["id"], env=ann)
    ben_project = cloud.os("project", "show", "img-b", "-f", "json")["id"]
    cloud.os("image", "add", "project", img["id"], ben_project, env=ann)
    cloud.os("image", "set", "--accept", img["id"], env=ben)
    assert img["id"] in [i["ID"] for i in cloud.os("image", "list", "-f", "json", env=ben)]
    out = tmp_path / "o"
    cloud.os("image", "save", "--file", str(out), img["id"], env=ben)
    assert out.read_bytes() == src.read_bytes()
    # The member may not modify or delete it.
    r = cloud.os("image", "delete", img["id"], env=ben, check=False)
    assert r.returncode != 0
    cloud.os("image", "remove", "project", img["id"], ben_project, env=ann)
    assert img["id"] not in [i["ID"] for i in cloud.os("image", "list", "-f", "json", env=ben)]
    cloud.os("image", "delete", img["id"], env=ann)


def token_and_image_url(cloud):
    t = cloud.os("token", "issue", "-f", "json")["id"]
    eps = cloud.os("endpoint", "list", "--service", "image", "--interface", "public", "-f", "json")
    return t, urllib.parse.urlparse(eps[0]["URL"])


def test_bad_input_gets_glance_statuses(cloud):
    token, u = token_and_image_url(cloud)

    def call(method, path, body=None, ctype="application/json"):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        c.request(method, path, body=body, headers={"X-Auth-Token": token, "Content-Type": ctype})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    assert call("POST", "/v2/images", "{bad json")[0] == 400
    assert call("POST", "/v2/images", json.dumps({"disk_format": "floppy"}))[0] == 400
    assert call("POST", "/v2/images", json.dumps({"status": "active"}))[0] == 403
    assert call("POST", "/v2/images", json.dumps({"name": "x"}), ctype="text/plain")[0] == 415
    s, body = call("POST", "/v2/images", json.dumps({"name": "bad-input", "disk_format": "raw", "container_format": "bare"}))
    assert s == 201
    iid = json.loads(body)["id"]
    # Bad JSON patches.
    assert call("PATCH", f"/v2/images/{iid}", json.dumps([{"op": "replace", "path": "/name", "value": "y"}]))[0] == 415
    patch = "application/openstack-images-v2.1-json-patch"
    assert call("PATCH", f"/v2/images/{iid}", "not json", ctype=patch)[0] == 400
    assert call("PATCH", f"/v2/images/{iid}", json.dumps([{"op": "move", "path": "/name"}]), ctype=patch)[0] == 400
    assert call("PATCH", f"/v2/images/{iid}", json.dumps([{"op": "remove", "path": "/nope"}]), ctype=patch)[0] == 409
    assert call("PATCH", f"/v2/images/{iid}", json.dumps([{"op": "replace", "path": "/size", "value": 1}]), ctype=patch)[0] == 403
    # Upload with the wrong content type, then a real one, then again to an active image.
    assert call("PUT", f"/v2/images/{iid}/file", b"abc", ctype="application/json")[0] == 415
    assert call("PUT", f"/v2/images/{iid}/file", b"abc", ctype="application/octet-stream")[0] == 204
    assert call("PUT", f"/v2/images/{iid}/file", b"abc", ctype="application/octet-stream")[0] == 409
    s, data = call("GET", f"/v2/images/{iid}/file")
    assert s == 200 and data == b"abc"
    assert call("DELETE", f"/v2/images/{iid}")[0] == 204


def test_upload_over_the_size_cap_and_a_killed_upload_leave_no_active_image():
    d = tempfile.mkdtemp(prefix="tessera-kill-")
    proc, _ = start_cloud(d, extra_conf="[image]\nimage_size_cap = 1048576\n")
    c = Cloud(d, proc, "")
    try:
        token, u = token_and_image_url(c)

        def create(name):
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            conn.request("POST", "/v2/images", json.dumps({"name": name, "disk_format": "raw", "container_format": "bare"}),
                         {"X-Auth-Token": token, "Content-Type": "application/json"})
            r = conn.getresponse()
            return json.loads(r.read())["id"]

        # Over the cap: 413, image back to queued, nothing stored.
        big = create("too-big")
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("PUT", f"/v2/images/{big}/file", os.urandom(2 << 20),
                     {"X-Auth-Token": token, "Content-Type": "application/octet-stream"})
        assert conn.getresponse().status == 413
        assert c.os("image", "show", big, "-f", "json")["status"] == "queued"

        # Kill the server in the middle of an upload.
        iid = create("killed")
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.putrequest("PUT", f"/v2/images/{iid}/file")
        conn.putheader("X-Auth-Token", token)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = os.urandom(64 * 1024)
        for _ in range(8):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        time.sleep(0.5)
        partial = [f for f in os.listdir(os.path.join(d, "images")) if f.endswith(".partial")]
        assert partial, "the upload should be in progress"
        assert c.os("image", "show", iid, "-f", "json")["status"] == "saving"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        conn.close()
        # Restart: the image is queued again, no partial file, no active image without data.
        proc, _ = start_cloud(d, extra_conf="[image]\nimage_size_cap = 1048576\n")
        c.proc = proc
        shown = c.os("image", "show", iid, "-f", "json")
        assert shown["status"] == "queued" and shown.get("size") is None
        assert not [f for f in os.listdir(os.path.join(d, "images")) if f.endswith(".partial")]
        assert not [i for i in c.os("image", "list", "-f", "json") if i["Status"] == "active"]
    finally:
        stop(c.proc)
        shutil.rmtree(d, ignore_errors=True)


def boots(disk, fmt, timeout=150):
    """Boot a disk in QEMU (software emulation, one NIC) until the test image's marker reaches the serial
    console; returns the serial log."""
    d = tempfile.mkdtemp(prefix="tessera-boot-")
    log = os.path.join(d, "serial.log")
    p = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot",
         "-serial", f"file:{log}", "-drive", f"file={disk},format={fmt},if=virtio,snapshot=on",
         "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        text = ""
        while time.time() < deadline and p.poll() is None:
            time.sleep(1)
            with open(log, "rb") as f:
                text = f.read().decode(errors="replace")
            if "TESSERA-TEST-IMAGE BOOTED" in text and "eth0" in text.split("TESSERA-TEST-IMAGE BOOTED")[1]:
                return text
        raise AssertionError(f"the test image did not boot:\n{text[-2000:]}")
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def test_create_test_image_uploads_a_disk_that_boots(cloud, tmp_path):
    env = cloud.openrc_env()
    p = subprocess.run([TESSERA_BIN, "manage", "image", "create-test-image", "--name", "tiny", "--disk-format", "qcow2"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    iid = p.stdout.strip()
    img = cloud.os("image", "show", iid, "-f", "json")
    assert img["name"] == "tiny" and img["status"] == "active" and img["visibility"] == "public"
    assert img["disk_format"] == "qcow2" and img["virtual_size"] >= img["size"] > 1 << 20
    out = tmp_path / "tiny.qcow2"
    cloud.os("image", "save", "--file", str(out), iid)
    log = boots(str(out), "qcow2")
    assert "10.0.2.15" in log, "the NIC got its DHCP lease"


def test_create_test_image_names_missing_packages(tmp_path):
    p = subprocess.run([TESSERA_BIN, "manage", "image", "create-test-image", "--boot-dir", str(tmp_path),
                        "--busybox", str(tmp_path / "busybox"), "--output", str(tmp_path / "x"), "--no-upload"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "linux-image-cloud-amd64" in p.stderr and "busybox-static" in p.stderr, p.stderr
