/* The test guest's broadcast flood: sends 60-byte broadcast frames (ARP ethertype, a zeroed body)
 * from eth0's own MAC as fast as the NIC takes them for the given seconds, then prints how many.
 * Built static into the test initramfs by scripts/guest-fixtures; run by `ember.action=flood`. */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int secs = argc > 1 ? atoi(argv[1]) : 30;
    unsigned char frame[60];
    memset(frame, 0, sizeof frame);
    memset(frame, 0xff, 6);
    FILE *f = fopen("/sys/class/net/eth0/address", "r");
    unsigned int m[6] = {0};
    if (!f || fscanf(f, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
        printf("EMBER-GUEST: flood: no eth0 address\n");
        return 1;
    }
    fclose(f);
    for (int i = 0; i < 6; i++)
        frame[6 + i] = (unsigned char)m[i];
    frame[12] = 0x08;
    frame[13] = 0x06;
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) {
        perror("EMBER-GUEST: flood: socket");
        return 1;
    }
    struct sockaddr_ll to;
    memset(&to, 0, sizeof to);
    to.sll_family = AF_PACKET;
    to.sll_ifindex = (int)if_nametoindex("eth0");
    to.sll_halen = 6;
    memset(to.sll_addr, 0xff, 6);
    long sent = 0, refused = 0;
    time_t end = time(NULL) + secs;
    while (time(NULL) < end) {
        if (sendto(s, frame, sizeof frame, 0, (struct sockaddr *)&to, sizeof to) == (ssize_t)sizeof frame)
            sent++;
        else
            refused++;
    }
    printf("EMBER-GUEST: flood sent %ld broadcast frames in %d s (%ld refused by the guest's stack)\n", sent, secs,
           refused);
    return 0;
}
